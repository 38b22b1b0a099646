// A data set split over MPI ranks (docs/MPI.md): each rank holds a contiguous
// part of the rows, and a distributed backend wraps the rank's local backend
// (CPU or its GPU). Every statistic is a sum over samples, so
//   profile = the local partial moments, merged with Chan's update over the
//             ranks' fixed binary tree (host/comm.hpp), in row order;
//   Σ·V, H·V = Σ_r (N_r/N) · (the local product), one allreduce of a P×c
//             block. Σ·V is centred on the global G (the caller's mean_grad),
//             so the sum reproduces the one-process Σ exactly.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "backend.hpp"
#include "comm.hpp"
#include "gradnoise/data.hpp"
#include "gradnoise/krylov.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "gradnoise/session.hpp"

namespace gradnoise::detail {

/// Rows [first_row, first_row + rows.num_samples()) of a data set of
/// `whole` rows: reads its own rows, reports the whole set's N.
class DataPart final : public DataSource {
 public:
  DataPart(std::shared_ptr<const DataSource> rows, std::int64_t first_row, std::int64_t whole)
      : rows_(std::move(rows)), first_row_(first_row), whole_(whole) {}
  std::int64_t num_samples() const override { return rows_->num_samples(); }
  std::int64_t whole_samples() const override { return whole_; }
  std::int64_t num_features() const override { return rows_->num_features(); }
  TargetKind target_kind() const override { return rows_->target_kind(); }
  std::int64_t num_targets() const override { return rows_->num_targets(); }
  void read(std::int64_t first, std::int64_t count, double* x, double* y,
            std::int32_t* labels) const override {
    rows_->read(first, count, x, y, labels);
  }
  const double* inputs_in_place(std::int64_t first, std::int64_t count) const override {
    return rows_->inputs_in_place(first, count);
  }
  std::int64_t first_row() const { return first_row_; }

 private:
  std::shared_ptr<const DataSource> rows_;
  std::int64_t first_row_;
  std::int64_t whole_;
};

/// A profile's partial moments as one flat vector, the ranks' reduction
/// payload: N, the loss's mean and M2, per layer Σ‖g_i − G_l‖² and Σ‖g_i‖²,
/// G (P), and with param_var the per-slot M2 (P). O(P) doubles.
std::vector<double> profile_moments(const Profile& profile, bool param_stats);
/// Chan's pairwise merge: `left` (earlier rows) absorbs `right` (later rows).
void merge_profile_moments(std::vector<double>& left, const std::vector<double>& right,
                           const Model& model, bool param_stats);
/// The profile of merged moments (the same formulas as profile_cpu's end).
Profile profile_from_moments(const std::vector<double>& moments, const Model& model, bool param_stats);

/// The backend of a rank: `local` works on the rank's DataPart of
/// `part_rows` rows out of `whole_rows`; every operation is collective.
std::unique_ptr<Backend> make_distributed_backend(Communicator& comm, std::unique_ptr<Backend> local,
                                                  std::int64_t part_rows, std::int64_t whole_rows);

/// With a GPU for `device`, makes the rank's local GPU current (local rank
/// mod the node's GPUs: one rank per GPU).
void select_rank_device(Communicator& comm, Device device);

/// This rank's session backend on its `part`: the device's backend (with a
/// GPU, the rank's local one: local rank mod the node's GPUs), wrapped in
/// the distributed backend when there are several ranks.
std::shared_ptr<Backend> make_rank_backend(Communicator& comm, const SessionOptions& options,
                                           std::shared_ptr<const DataPart> part);

/// Σ_ll·V (one layer's diagonal block, CPU) summed over the ranks' parts.
BlockOperator distributed_layer_covariance(Communicator& comm, const Model& model,
                                           const DataSource& part, Loss loss,
                                           const std::vector<double>& mean_grad,
                                           std::int64_t chunk_rows, std::int64_t layer);

/// out ← Σ_r (N_r / N) out_r over the ranks: the whole-data value of a
/// per-part average (a product with Σ or H), one allreduce.
void average_over_parts(Communicator& comm, double* values, std::int64_t count,
                        std::int64_t part_rows, std::int64_t whole_rows);

}  // namespace gradnoise::detail
