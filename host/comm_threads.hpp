// Ranks as threads of one process (`--devices 0,1,…`, docs/MPI.md): each
// thread is a rank of one communicator whose messages go through mailboxes
// in memory, and runs the same distributed profile or sweep an MPI rank
// runs, on its own GPU (or its CPU share). Several communicators live in one
// process, so code that runs on a rank takes its Communicator& instead of
// calling world().
#pragma once

#include <functional>
#include <vector>

#include "comm.hpp"

namespace gradnoise::detail {

/// Runs rank(comm) on one thread per entry of `local_ranks`, thread r being
/// rank r of a communicator of that many ranks whose local_rank() is
/// local_ranks[r] (its GPU ordinal). Returns rank 0's result once every
/// thread has returned. When a rank throws, the ranks still waiting for it
/// stop with "rank r of R stopped: …" (the first failure) instead of waiting
/// for ever, and the
/// first exception thrown is rethrown here (a failure agreed in together() is
/// the same on every rank).
int run_thread_ranks(const std::vector<int>& local_ranks,
                     const std::function<int(Communicator&)>& rank);

}  // namespace gradnoise::detail
