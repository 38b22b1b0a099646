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
#include "nccl.hpp"
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
/// `part_rows` rows out of `whole_rows`; every operation is collective. With
/// `device_sum` (every rank's engine a GPU, NCCL loaded) the Σ·V and H·V
/// blocks are summed GPU to GPU; without, through `comm` on the host. The
/// profile's partial moments always merge on the host (Chan's update is not
/// a sum, and they are O(P) once per profile).
std::unique_ptr<Backend> make_distributed_backend(Communicator& comm, std::unique_ptr<Backend> local,
                                                  std::int64_t part_rows, std::int64_t whole_rows,
                                                  std::unique_ptr<DeviceSum> device_sum = nullptr);

/// With a GPU for `device`, makes the rank's local GPU current (local rank
/// mod the node's GPUs: one rank per GPU; a thread rank's own GPU).
void select_rank_device(Communicator& comm, Device device);

/// This rank's session backend on its `part` and the path its sums take:
/// the device's backend (with a GPU, the rank's local one), wrapped in the
/// distributed backend when there are several ranks. Collective: call it
/// on every rank, outside together() (it agrees on the outcome itself).
struct RankBackend {
  std::shared_ptr<Backend> backend;
  /// report.json's "reduction": "none" (one process), "host" or "nccl".
  std::string reduction;
};
RankBackend make_rank_backend(Communicator& comm, const SessionOptions& options,
                              std::shared_ptr<const DataPart> part, Reduction reduction);

/// Σ_ll·V (one layer's diagonal block, CPU) summed over the ranks' parts.
BlockOperator distributed_layer_covariance(Communicator& comm, const Model& model,
                                           const DataSource& part, Loss loss,
                                           const std::vector<double>& mean_grad,
                                           std::int64_t chunk_rows, std::int64_t layer);

/// out ← Σ_r (N_r / N) out_r over the ranks: the whole-data value of a
/// per-part average (a product with Σ or H), one allreduce: through
/// `device_sum` when given, else comm.sum (the same bits either way).
void average_over_parts(Communicator& comm, double* values, std::int64_t count,
                        std::int64_t part_rows, std::int64_t whole_rows,
                        DeviceSum* device_sum = nullptr);

}  // namespace gradnoise::detail
