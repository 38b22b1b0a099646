// The communicator seam: how the processes of one run (MPI ranks) talk.
// Two implementations: the single process (no MPI at all), and MPI
// (host/comm_mpi.cpp, compiled only when CMake found MPI). Engines and the
// CLI call the collectives below and never include <mpi.h> or test for it.
//
// Every collective is called by every rank in the same order. Reductions
// run over a fixed binary tree of ranks (docs/MPI.md): a result depends only
// on the inputs and the rank count, so it is bit-identical run to run.
// A local failure must not leave the other ranks waiting in a collective:
// work that can fail runs inside together(), which agrees on the outcome
// first (docs/MPI.md "Errors").
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace gradnoise::detail {

class Communicator {
 public:
  /// combine(left, right): fold `right` (the later ranks' part) into `left`.
  using Combine = std::function<void(std::vector<double>& left, const std::vector<double>& right)>;

  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// "single process" or the MPI library's name and version.
  virtual std::string library() const = 0;
  /// The rank's index among the ranks of its node (its GPU), 0 when alone.
  virtual int local_rank() const = 0;

  /// Bytes this rank sent and received through the communicator so far
  /// (with the GPU-to-GPU transfers made on its behalf, count_device()).
  std::uint64_t bytes_communicated() const { return bytes_; }
  /// Counts bytes a device collective (NCCL) moved for this rank.
  void count_device(std::size_t bytes) { bytes_ += bytes; }

  /// Folds every rank's `values` (the same length everywhere) in rank order
  /// over a fixed binary tree: ranks r and r + s combine at step s = 1, 2,
  /// 4, …, the lower rank's part on the left (core/tree.hpp, the schedule the
  /// NCCL path walks too). Every rank gets the result.
  void reduce(std::vector<double>& values, const Combine& combine);
  /// Elementwise sum of every rank's `values` by reduce(): one allreduce.
  void sum(std::vector<double>& values);
  double sum(double value);
  std::int64_t max(std::int64_t value);
  /// Rank `root`'s bytes on every rank.
  void broadcast(std::string& bytes, int root);
  /// Every rank's bytes at rank 0, in rank order (empty elsewhere).
  std::vector<std::string> gather(const std::string& bytes);

  /// Runs `work` on every rank, then agrees on the outcome: when any rank
  /// failed, every rank throws the failure of the lowest failing rank, its
  /// message prefixed with "rank r of R: " (InputError stays InputError,
  /// RuntimeError and std::bad_alloc come back as RuntimeError).
  template <class Work>
  auto together(Work&& work) -> decltype(work()) {
    std::exception_ptr failure;
    if constexpr (std::is_void_v<decltype(work())>) {
      try {
        work();
      } catch (...) {
        failure = std::current_exception();
      }
      agree(failure);
    } else {
      decltype(work()) result{};
      try {
        result = work();
      } catch (...) {
        failure = std::current_exception();
      }
      agree(failure);
      return result;
    }
  }
  /// The collective half of together(): throws everywhere when a rank failed.
  void agree(std::exception_ptr local_failure);
  /// Whether a failure was agreed (every rank is exiting with it), so the
  /// tool can exit normally instead of aborting the job.
  bool failure_agreed() const { return failure_agreed_; }
  /// Ends every rank of the job at once (a failure outside together()).
  [[noreturn]] virtual void abort(int status) = 0;

 protected:
  virtual void send(int to, const void* data, std::size_t bytes) = 0;
  virtual void recv(int from, void* data, std::size_t bytes) = 0;
  /// The smallest of the ranks' values.
  virtual std::int64_t min_raw(std::int64_t value) = 0;
  virtual void broadcast_raw(void* data, std::size_t bytes, int root) = 0;
  void count(std::size_t bytes) { bytes_ += bytes; }

 private:
  std::uint64_t bytes_ = 0;
  bool failure_agreed_ = false;
};

/// The process's communicator: MPI when this gradnoise was built with MPI and
/// a launcher (mpirun, srun) started it with its variables set; otherwise a
/// single process. MPI is initialised on the first call and finalised at exit.
Communicator& world();

/// Whether this gradnoise was built with MPI.
bool mpi_built();

}  // namespace gradnoise::detail
