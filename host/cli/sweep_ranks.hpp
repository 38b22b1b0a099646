// gradnoise sweep over MPI ranks (docs/MPI.md "Sweeps").
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "comm.hpp"
#include "gradnoise/sweep.hpp"

namespace gradnoise::cli {

/// The rank that runs each grid point (batch size major, then learning
/// rate): longest first (cost ∝ batch size) to the least loaded rank.
std::vector<int> assign_grid_points(const SweepConfig& config, int ranks);

/// A checkpoint file's bytes; InputError naming --checkpoint when unreadable.
std::string read_checkpoint(const std::string& path);

/// Each rank's checkpoint: "PATH.rankR-of-N".
std::string rank_checkpoint_path(const std::string& path, int rank, int ranks);

/// Runs this rank's grid points of `config` (every rank calls it) and returns
/// the whole sweep's result, identical to one process's, on rank 0; nothing
/// on the other ranks. Checkpoints go to rank_checkpoint_path(checkpoint_path)
/// and are resumed from there.
std::optional<SweepResult> run_sweep_over_ranks(detail::Communicator& comm, const Model& initial,
                                                const Dataset& train, const Dataset* test,
                                                const SweepConfig& config,
                                                const std::string& checkpoint_path,
                                                double checkpoint_every);

}  // namespace gradnoise::cli
