// The thread communicator (host/comm_threads.hpp): point-to-point messages
// are byte strings in one FIFO mailbox per (sender, receiver) pair, as MPI
// keeps the order of messages between two ranks; the minimum is a barrier
// round. One mutex guards everything: the payloads are O(P) doubles, a few
// per collective, so contention does not matter.
#include "comm_threads.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "blas_threads.hpp"
#include "gradnoise/error.hpp"

namespace gradnoise::detail {
namespace {

/// What the ranks of one run share.
class ThreadGroup {
 public:
  explicit ThreadGroup(int ranks)
      : ranks_(ranks), arrivals_(static_cast<std::size_t>(ranks)), left_(static_cast<std::size_t>(ranks)) {}

  int ranks() const { return ranks_; }

  void post(int from, int to, const void* data, std::size_t bytes) {
    std::lock_guard lock(mutex_);
    mailboxes_[{from, to}].emplace_back(static_cast<const char*>(data), bytes);
    changed_.notify_all();
  }

  void take(int from, int to, void* data, std::size_t bytes) {
    std::unique_lock lock(mutex_);
    std::deque<std::string>& box = mailboxes_[{from, to}];
    // What `from` posted before it left still arrives.
    wait(lock, [&] { return !box.empty(); }, [&] { return left_[static_cast<std::size_t>(from)] != 0; });
    const std::string message = std::move(box.front());
    box.pop_front();
    if (message.size() != bytes) {
      throw RuntimeError("thread rank " + std::to_string(to) + " expected " + std::to_string(bytes) +
                         " bytes from rank " + std::to_string(from) + " and got " +
                         std::to_string(message.size()) + " (the ranks' collectives went out of step)");
    }
    std::memcpy(data, message.data(), bytes);
  }

  /// Every rank's `value` in, the smallest out: a barrier round.
  std::int64_t min(int rank, std::int64_t value) {
    std::unique_lock lock(mutex_);
    const std::uint64_t round = round_;
    arrivals_[static_cast<std::size_t>(rank)] = value;
    if (++arrived_ == ranks_) {
      round_min_ = *std::min_element(arrivals_.begin(), arrivals_.end());
      arrived_ = 0;
      ++round_;
      changed_.notify_all();
    } else {
      // A rank that left cannot join the round.
      wait(lock, [&] { return round_ != round; },
           [&] { return std::find(left_.begin(), left_.end(), 1) != left_.end(); });
    }
    // The next round cannot end before this rank joins it: round_min_ stays.
    return round_min_;
  }

  /// Rank `rank` left, with an exception (`why`) or returned: a rank
  /// waiting for it stops with the first failure's sentence.
  void leave(int rank, const std::string& why) {
    std::lock_guard lock(mutex_);
    left_[static_cast<std::size_t>(rank)] = 1;
    if (first_failure_.empty()) {
      first_failure_ = "rank " + std::to_string(rank) + " of " + std::to_string(ranks_) + " " + why;
    }
    changed_.notify_all();
  }

 private:
  /// Waits until ready(), or throws once gone() says it never will be.
  template <class Ready, class Gone>
  void wait(std::unique_lock<std::mutex>& lock, Ready ready, Gone gone) {
    changed_.wait(lock, [&] { return ready() || gone(); });
    if (!ready()) throw RuntimeError(first_failure_);
  }

  const int ranks_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::pair<int, int>, std::deque<std::string>> mailboxes_;
  std::vector<std::int64_t> arrivals_;
  int arrived_ = 0;
  std::uint64_t round_ = 0;
  std::int64_t round_min_ = 0;
  std::vector<int> left_;       // per rank: 1 once its thread left
  std::string first_failure_;   // "rank r of R stopped: …"
};

class ThreadRank final : public Communicator {
 public:
  ThreadRank(ThreadGroup& group, int rank, int local_rank)
      : group_(group), rank_(rank), local_rank_(local_rank) {}

  int rank() const override { return rank_; }
  int size() const override { return group_.ranks(); }
  std::string library() const override { return "threads of one process"; }
  int local_rank() const override { return local_rank_; }
  /// Ends this rank; the others stop at their next wait on it.
  [[noreturn]] void abort(int status) override {
    const std::string why = "aborted with status " + std::to_string(status);
    group_.leave(rank_, "stopped: " + why);
    throw RuntimeError(why);
  }

 protected:
  void send(int to, const void* data, std::size_t bytes) override { group_.post(rank_, to, data, bytes); }
  void recv(int from, void* data, std::size_t bytes) override { group_.take(from, rank_, data, bytes); }
  std::int64_t min_raw(std::int64_t value) override { return group_.min(rank_, value); }
  void broadcast_raw(void* data, std::size_t bytes, int root) override {
    if (rank_ == root) {
      for (int to = 0; to < size(); ++to) {
        if (to != root) send(to, data, bytes);
      }
    } else {
      recv(root, data, bytes);
    }
  }

 private:
  ThreadGroup& group_;
  const int rank_;
  const int local_rank_;
};

}  // namespace

int run_thread_ranks(const std::vector<int>& local_ranks,
                     const std::function<int(Communicator&)>& rank) {
  const int ranks = static_cast<int>(local_ranks.size());
  ThreadGroup group(ranks);
  std::vector<int> results(local_ranks.size(), 0);
  std::mutex first_mutex;
  std::exception_ptr first_failure;
  const auto run_rank = [&](int r) {
    ThreadRank comm(group, r, local_ranks[static_cast<std::size_t>(r)]);
    try {
      results[static_cast<std::size_t>(r)] = rank(comm);
      group.leave(r, "returned while another rank waited for it");
    } catch (...) {
      {
        std::lock_guard lock(first_mutex);
        if (!first_failure) first_failure = std::current_exception();
      }
      std::string why = "an unknown failure";
      try {
        throw;
      } catch (const std::exception& error) {
        why = error.what();
      } catch (...) {
      }
      group.leave(r, "stopped: " + why);
    }
  };
  // The ranks share one OpenBLAS, whose thread pool serves one caller at a
  // time: concurrent callers spin against each other (a 3-rank profile ran
  // 10x slower). One BLAS thread per caller while the ranks run, as the
  // engines themselves set it around their own threads.
  const SingleThreadedBlas one_blas_thread(ranks > 1);
  std::vector<std::thread> threads;
  for (int r = 1; r < ranks; ++r) threads.emplace_back(run_rank, r);
  run_rank(0);  // rank 0 on the calling thread: its output is the process's
  for (std::thread& thread : threads) thread.join();
  if (first_failure) std::rethrow_exception(first_failure);
  return results.empty() ? 0 : results[0];
}

}  // namespace gradnoise::detail
