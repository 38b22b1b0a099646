// The pieces of a run over ranks that one process can check (docs/MPI.md):
// the row split, and the merge of the parts' partial moments in the ranks'
// tree order against the one-pass profile of the whole data, for every loss
// and on an ill-conditioned problem; the single-process communicator; ranks
// as threads (--devices): their sums fold in the tree's order bit for bit,
// their profile and products equal one process's, a failing rank stops them
// all with one sentence; NCCL's loader and the choice of the sums' path,
// and (with two GPUs and NCCL) the GPU path's bits against the host's. The
// runs under mpiexec themselves are tests/test_mpi.py (ctest Mpi.*).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>

#include "comm.hpp"
#include "comm_threads.hpp"
#include "distributed.hpp"
#include "gradnoise/cuda.hpp"
#include "nccl.hpp"
#include "tree.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/loss.hpp"
#include "backend.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using namespace gradnoise::testing;

TEST(SplitRows, PartsAreContiguousAndDifferByAtMostOneRow) {
  for (const std::int64_t n : {1, 5, 7, 1001}) {
    for (const int parts : {1, 2, 3, 5}) {
      if (parts > n) continue;
      std::int64_t next = 0, smallest = n, largest = 0;
      for (int part = 0; part < parts; ++part) {
        const RowSpan span = split_rows(n, part, parts);
        EXPECT_EQ(span.first, next);
        next += span.count;
        smallest = std::min(smallest, span.count);
        largest = std::max(largest, span.count);
      }
      EXPECT_EQ(next, n);
      EXPECT_LE(largest - smallest, 1);
      EXPECT_GE(smallest, 1);
    }
  }
}

/// Rows [first, first + count) of `data` as a part of it.
std::shared_ptr<const detail::DataPart> part_of(const Dataset& data, std::int64_t first, std::int64_t count) {
  auto rows = std::make_shared<Dataset>();
  rows->n = count;
  rows->d = data.d;
  rows->k = data.k;
  rows->x.assign(data.x.begin() + first * data.d, data.x.begin() + (first + count) * data.d);
  if (!data.y.empty()) rows->y.assign(data.y.begin() + first * data.k, data.y.begin() + (first + count) * data.k);
  if (!data.labels.empty()) rows->labels.assign(data.labels.begin() + first, data.labels.begin() + first + count);
  return std::make_shared<const detail::DataPart>(rows, first, data.n);
}

/// The profile of `parts` parts merged as the ranks merge them: ranks r and
/// r + s at step s = 1, 2, 4, …, the lower rank's rows on the left.
Profile merged_profile(const Model& model, const Dataset& data, Loss loss, int parts) {
  ProfileOptions options;
  options.loss = loss;
  options.chunk_rows = 64;
  options.param_stats = true;
  std::vector<std::vector<double>> moments;
  for (int part = 0; part < parts; ++part) {
    const RowSpan span = split_rows(data.n, part, parts);
    moments.push_back(detail::profile_moments(profile_cpu(model, *part_of(data, span.first, span.count), options), true));
  }
  detail::for_each_tree_merge(parts, [&](int left, int right) {
    detail::merge_profile_moments(moments[left], moments[right], model, true);
  });
  return detail::profile_from_moments(moments[0], model, true);
}

TEST(DistributedMerge, PartsMergedInTreeOrderMatchTheWholeForEveryLoss) {
  for (const Loss loss : all_losses()) {
    SCOPED_TRACE(loss_label(loss));
    const Dataset data = random_dataset(503, 5, 3, loss, 11);
    const Model model = random_model({5, 4, 3}, true, 12);
    ProfileOptions options;
    options.loss = loss;
    options.chunk_rows = 64;
    options.param_stats = true;
    const Profile whole = profile_cpu(model, data, options);
    for (const int parts : {2, 3, 5, 8}) {
      SCOPED_TRACE(parts);
      expect_profiles_match(merged_profile(model, data, loss, parts), whole, 1e-12, 1e-15);
    }
  }
}

TEST(DistributedMerge, OneRowPartsAndAnIllConditionedProblemStayAccurate) {
  const Dataset tiny = random_dataset(5, 3, 1, Loss::squared, 21);
  const Model tiny_model = random_model({3, 1}, true, 22);
  ProfileOptions options;
  options.param_stats = true;
  options.chunk_rows = 64;
  expect_profiles_match(merged_profile(tiny_model, tiny, Loss::squared, 3),
                        profile_cpu(tiny_model, tiny, options), 1e-12, 1e-15);
  // ‖G‖² ≫ tr Σ: the merge is Chan's, centred, so tr Σ keeps its digits.
  const IllConditioned p = ill_conditioned_problem(600, 4, 2, 1e-3, 1e-3, 31, 32);
  const Profile whole = profile_cpu(p.model, p.data, options);
  ASSERT_GT(whole.grad_norm_sq / whole.trace_cov, 1e6);
  expect_profiles_match(merged_profile(p.model, p.data, Loss::squared, 3), whole, 1e-9, 1e-15);
}

TEST(SingleProcessCommunicator, CollectivesAreTheIdentityAndFailuresKeepTheirType) {
  detail::Communicator& comm = detail::world();
  ASSERT_EQ(comm.size(), 1);  // ctest starts no launcher
  std::vector<double> values{1.5, -2.0};
  comm.sum(values);
  EXPECT_EQ(values, (std::vector<double>{1.5, -2.0}));
  EXPECT_EQ(comm.max(std::int64_t{7}), 7);
  EXPECT_THROW(comm.together([] { throw InputError("bad"); }), InputError);
  EXPECT_THROW(comm.together([] { throw std::bad_alloc(); }), std::bad_alloc);
  EXPECT_EQ(comm.together([] { return 3; }), 3);
  EXPECT_FALSE(comm.failure_agreed());
}

// ---- Ranks as threads (--devices) ----------------------------------------------

/// Values whose sum depends on the order of the additions: ±1e16 beside
/// O(1) terms, so a left-to-right sum and the tree's differ in their bits.
std::vector<double> order_sensitive_values(int rank) {
  const double sign = rank % 2 == 0 ? 1.0 : -1.0;
  return {sign * 1e16 + rank, 1.0 / (rank + 3), sign * (rank + 1) * 0.1, 1e-8 * rank - 0.3};
}

TEST(ThreadRanks, SumsFoldInTheTreeOrderBitForBit) {
  bool some_order_differs = false;
  for (int ranks = 1; ranks <= 9; ++ranks) {
    SCOPED_TRACE(ranks);
    std::vector<std::vector<double>> parts;
    for (int r = 0; r < ranks; ++r) parts.push_back(order_sensitive_values(r));
    // The one-process fold over the same schedule, and a plain left-to-right sum.
    std::vector<std::vector<double>> folded = parts;
    detail::for_each_tree_merge(ranks, [&](int left, int right) {
      for (std::size_t j = 0; j < folded[left].size(); ++j) folded[left][j] += folded[right][j];
    });
    std::vector<double> in_order = parts[0];
    for (int r = 1; r < ranks; ++r) {
      for (std::size_t j = 0; j < in_order.size(); ++j) in_order[j] += parts[r][j];
    }
    some_order_differs = some_order_differs || in_order != folded[0];

    std::vector<std::vector<double>> got(static_cast<std::size_t>(ranks));
    detail::run_thread_ranks(std::vector<int>(static_cast<std::size_t>(ranks), 0), [&](detail::Communicator& comm) {
      std::vector<double> values = order_sensitive_values(comm.rank());
      comm.sum(values);
      got[static_cast<std::size_t>(comm.rank())] = values;
      return 0;
    });
    for (int r = 0; r < ranks; ++r) EXPECT_EQ(got[static_cast<std::size_t>(r)], folded[0]) << "rank " << r;
  }
  // Otherwise the values could not tell the tree's order from another.
  EXPECT_TRUE(some_order_differs);
}

TEST(ThreadRanks, WalkTreeGivesEachRankItsMergesInOrder) {
  for (int ranks = 1; ranks <= 12; ++ranks) {
    std::vector<std::pair<int, int>> merges, walked;
    detail::for_each_tree_merge(ranks, [&](int left, int right) { merges.emplace_back(left, right); });
    EXPECT_EQ(merges.size(), static_cast<std::size_t>(ranks - 1));  // a tree: every part absorbed once
    for (int me = 0; me < ranks; ++me) {
      int handed_over = 0;
      detail::walk_tree(
          me, ranks, [&](int from) { walked.emplace_back(me, from); },
          [&](int to) {
            ++handed_over;
            EXPECT_LT(to, me);
          });
      EXPECT_EQ(handed_over, me == 0 ? 0 : 1) << "rank " << me << " of " << ranks;
    }
    std::sort(merges.begin(), merges.end());
    std::sort(walked.begin(), walked.end());
    EXPECT_EQ(walked, merges) << ranks << " ranks";
  }
}

/// What one thread rank computed: its whole-data profile and products.
struct RankResult {
  Profile profile;
  std::vector<double> cov_product, hessian_product;
  std::string reduction;
};

/// Runs the rank backends of `ranks` CPU thread ranks on `data` split as
/// the CLI splits it: the profile, Σ·V and H·V of the 2-column block `block`.
std::vector<RankResult> thread_rank_results(const Model& model, const Dataset& data, Loss loss,
                                            int ranks, const std::vector<double>& block) {
  std::vector<RankResult> results(static_cast<std::size_t>(ranks));
  detail::run_thread_ranks(std::vector<int>(static_cast<std::size_t>(ranks), 0), [&](detail::Communicator& comm) {
    const RowSpan span = split_rows(data.n, comm.rank(), comm.size());
    SessionOptions options;
    options.loss = loss;
    options.device = Device::cpu;
    options.chunk_rows = 64;
    detail::RankBackend rank = detail::make_rank_backend(comm, options, part_of(data, span.first, span.count),
                                                         detail::Reduction::automatic);
    ProfileOptions profile_options;
    profile_options.loss = loss;
    profile_options.chunk_rows = 64;
    profile_options.param_stats = true;
    RankResult& mine = results[static_cast<std::size_t>(comm.rank())];
    mine.profile = rank.backend->profile(model, profile_options);
    mine.cov_product.resize(block.size());
    mine.hessian_product.resize(block.size());
    rank.backend->covariance_apply(model, mine.profile.param_mean, block.data(), mine.cov_product.data(), 2);
    rank.backend->hessian_apply(model, false, block.data(), mine.hessian_product.data(), 2);
    mine.reduction = rank.reduction;
    return 0;
  });
  return results;
}

TEST(ThreadRanks, ProfileAndProductsMatchOneProcess) {
  for (const Loss loss : all_losses()) {
    SCOPED_TRACE(loss_label(loss));
    const Dataset data = random_dataset(301, 4, 3, loss, 41);
    const Model model = random_model({4, 3, 3}, true, 42);
    const auto whole = std::make_shared<const Dataset>(data);
    std::unique_ptr<detail::Backend> one = detail::make_cpu_backend(whole, loss, 64, 0);
    ProfileOptions options;
    options.loss = loss;
    options.chunk_rows = 64;
    options.param_stats = true;
    const Profile want = one->profile(model, options);
    std::vector<double> block(static_cast<std::size_t>(2 * model.num_params()));
    for (std::size_t j = 0; j < block.size(); ++j) block[j] = std::sin(0.7 * static_cast<double>(j) + 0.2);
    std::vector<double> want_cov(block.size()), want_hessian(block.size());
    one->covariance_apply(model, want.param_mean, block.data(), want_cov.data(), 2);
    one->hessian_apply(model, false, block.data(), want_hessian.data(), 2);
    for (const int ranks : {2, 3}) {
      SCOPED_TRACE(ranks);
      const std::vector<RankResult> got = thread_rank_results(model, data, loss, ranks, block);
      for (const RankResult& rank : got) {
        expect_profiles_match(rank.profile, want, 1e-12);
        EXPECT_TRUE(all_near(rank.cov_product, want_cov, 1e-12, 1e-12 * max_abs(want_cov)));
        EXPECT_TRUE(all_near(rank.hessian_product, want_hessian, 1e-12, 1e-12 * max_abs(want_hessian)));
        EXPECT_EQ(rank.reduction, "host");  // CPU engines: NCCL is not tried
        // Every rank holds the same bits (one broadcast result).
        EXPECT_EQ(rank.cov_product, got[0].cov_product);
      }
    }
  }
}

TEST(ThreadRanks, AFailingRankGivesEveryRankTheSameSentence) {
  Dataset data = random_dataset(90, 3, 1, Loss::squared, 51);
  const Model model = random_model({3, 1}, true, 52);
  data.x[static_cast<std::size_t>(80 * data.d + 1)] = std::nan("");  // row 80: rank 2 of 3 (rows 60..89)
  std::vector<std::string> messages(3);
  std::vector<int> input_errors(3, 0);
  EXPECT_THROW(
      detail::run_thread_ranks({0, 1, 2}, [&](detail::Communicator& comm) {
        const RowSpan span = split_rows(data.n, comm.rank(), comm.size());
        SessionOptions options;
        options.device = Device::cpu;
        detail::RankBackend rank =
            detail::make_rank_backend(comm, options, part_of(data, span.first, span.count), detail::Reduction::host);
        ProfileOptions profile_options;
        try {
          rank.backend->profile(model, profile_options);
        } catch (const InputError& error) {
          messages[static_cast<std::size_t>(comm.rank())] = error.what();
          input_errors[static_cast<std::size_t>(comm.rank())] = 1;
          throw;
        }
        return 0;
      }),
      InputError);
  EXPECT_EQ(input_errors, (std::vector<int>{1, 1, 1}));
  EXPECT_EQ(messages[0].rfind("rank 2 of 3: ", 0), 0u) << messages[0];
  EXPECT_EQ(messages[1], messages[0]);
  EXPECT_EQ(messages[2], messages[0]);
}

TEST(ThreadRanks, ARankFailingOutsideTogetherStopsTheOthersInsteadOfHanging) {
  std::vector<std::string> messages(3);
  try {
    detail::run_thread_ranks({0, 1, 2}, [&](detail::Communicator& comm) {
      try {
        if (comm.rank() == 1) throw RuntimeError("a bug on rank 1");
        std::vector<double> values{1.0};
        comm.sum(values);  // waits for rank 1, which never comes
      } catch (const std::exception& error) {
        messages[static_cast<std::size_t>(comm.rank())] = error.what();
        throw;
      }
      return 0;
    });
    ADD_FAILURE() << "run_thread_ranks returned normally";
  } catch (const RuntimeError& error) {
    EXPECT_STREQ(error.what(), "a bug on rank 1");  // the first failure, not its echoes
  }
  EXPECT_EQ(messages[0], "rank 1 of 3 stopped: a bug on rank 1");
  EXPECT_EQ(messages[1], "a bug on rank 1");
  // Rank 2 hands its part to rank 0 and then waits in the broadcast.
  EXPECT_EQ(messages[2], "rank 1 of 3 stopped: a bug on rank 1");
}

// ---- NCCL: the loader and the choice of the sums' path ---------------------------

/// Sets an environment variable for a scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) saved_ = old;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (saved_) {
      ::setenv(name_, saved_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> saved_;
};

TEST(NcclLoader, AMissingOrForeignLibraryIsOneSentenceNamingIt) {
  detail::NcclLibrary library;
  std::string problem;
  EXPECT_FALSE(detail::open_nccl("/nonexistent/libnccl.so.2", library, problem));
  EXPECT_NE(problem.find("cannot load NCCL from /nonexistent/libnccl.so.2"), std::string::npos) << problem;
  // A real library that is not NCCL: the first missing entry point is named.
  problem.clear();
  EXPECT_FALSE(detail::open_nccl("libz.so.1", library, problem));
  EXPECT_NE(problem.find("libz.so.1 does not export ncclGetVersion"), std::string::npos) << problem;
  for (const std::string& text : {problem}) EXPECT_EQ(text.find('\n'), std::string::npos);

  const ScopedEnv bogus("GRADNOISE_NCCL", "/nonexistent/bogus-nccl.so");
  problem.clear();
  EXPECT_EQ(detail::load_nccl(problem), nullptr);
  EXPECT_NE(problem.find("/nonexistent/bogus-nccl.so"), std::string::npos) << problem;
  EXPECT_NE(problem.find("GRADNOISE_NCCL"), std::string::npos) << problem;
}

TEST(NcclLoader, TheInstalledNcclExportsEveryEntryPoint) {
  detail::NcclLibrary library;
  std::string problem;
  if (!detail::open_nccl("libnccl.so.2", library, problem)) GTEST_SKIP() << problem;
  EXPECT_GE(library.version, 20700);  // ncclSend/ncclRecv arrived in 2.7
  EXPECT_EQ(library.path, "libnccl.so.2");
  EXPECT_STREQ(library.get_error_string(detail::nccl_abi::kSuccess), "no error");
}

TEST(NcclLoader, WithoutNcclTheSumsFallBackToTheHostUnlessNcclWasAsked) {
  // GPU engines as far as the choice is concerned; NCCL cannot load.
  const ScopedEnv bogus("GRADNOISE_NCCL", "/nonexistent/bogus-nccl.so");
  std::vector<int> fell_back(2, 0);
  std::vector<std::string> refusals(2);
  detail::run_thread_ranks({0, 1}, [&](detail::Communicator& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    fell_back[r] = detail::make_device_sum(comm, true, detail::Reduction::automatic) == nullptr;
    try {
      detail::make_device_sum(comm, true, detail::Reduction::nccl);
    } catch (const InputError& error) {
      refusals[r] = error.what();
    }
    // A CPU engine on one rank only: NCCL is off for all.
    EXPECT_EQ(detail::make_device_sum(comm, comm.rank() == 0, detail::Reduction::automatic), nullptr);
    return 0;
  });
  EXPECT_EQ(fell_back, (std::vector<int>{1, 1}));
  EXPECT_EQ(refusals[0].rfind("rank 0 of 2: --reduction nccl: cannot load NCCL from /nonexistent/bogus-nccl.so", 0), 0u)
      << refusals[0];
  EXPECT_EQ(refusals[1], refusals[0]);
  // One process: nothing to sum over; NCCL asked for is refused.
  EXPECT_EQ(detail::make_device_sum(detail::world(), true, detail::Reduction::automatic), nullptr);
  EXPECT_THROW(detail::make_device_sum(detail::world(), true, detail::Reduction::nccl), InputError);
  EXPECT_THROW(detail::parse_reduction("ring"), InputError);
}

// ---- With two GPUs and NCCL: the GPU path's bits against the host's -------------

TEST(NcclSum, TwoGpusSumBitForBitAsTheHost) {
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs two GPUs; " << cuda_device_count() << " here";
  std::string problem;
  if (detail::load_nccl(problem) == nullptr) GTEST_SKIP() << problem;
  for (const int ranks : {2, std::min(cuda_device_count(), 3)}) {
    std::vector<int> gpus;
    for (int r = 0; r < ranks; ++r) gpus.push_back(r);
    std::vector<std::vector<double>> device(static_cast<std::size_t>(ranks)), host(device.size());
    std::vector<std::uint64_t> bytes_device(device.size()), bytes_host(device.size());
    detail::run_thread_ranks(gpus, [&](detail::Communicator& comm) {
      const auto r = static_cast<std::size_t>(comm.rank());
      detail::select_rank_device(comm, Device::cuda);
      std::unique_ptr<detail::DeviceSum> sum = detail::make_device_sum(comm, true, detail::Reduction::nccl);
      std::vector<double> values;
      for (int copy = 0; copy < 1000; ++copy) {
        for (const double v : order_sensitive_values(comm.rank())) values.push_back(v * (copy + 1));
      }
      std::vector<double> on_host = values;
      std::uint64_t before = comm.bytes_communicated();
      sum->sum(values.data(), values.size());
      bytes_device[r] = comm.bytes_communicated() - before;
      before = comm.bytes_communicated();
      comm.sum(on_host);
      bytes_host[r] = comm.bytes_communicated() - before;
      device[r] = values;
      host[r] = on_host;
      return 0;
    });
    for (int r = 0; r < ranks; ++r) {
      EXPECT_EQ(device[static_cast<std::size_t>(r)], host[static_cast<std::size_t>(r)]) << "rank " << r;
      EXPECT_EQ(bytes_device[static_cast<std::size_t>(r)], bytes_host[static_cast<std::size_t>(r)]);
    }
  }
}

TEST(NcclSum, GpuRanksProductsMatchTheHostPathBitForBit) {
  if (cuda_device_count() < 2) GTEST_SKIP() << "needs two GPUs; " << cuda_device_count() << " here";
  std::string problem;
  if (detail::load_nccl(problem) == nullptr) GTEST_SKIP() << problem;
  const Dataset data = random_dataset(4001, 6, 3, Loss::cross_entropy, 61);
  const Model model = random_model({6, 5, 3}, true, 62);
  std::vector<double> block(static_cast<std::size_t>(3 * model.num_params()));
  for (std::size_t j = 0; j < block.size(); ++j) block[j] = std::cos(0.3 * static_cast<double>(j));
  std::map<std::string, std::vector<double>> products;
  std::mutex mutex;
  for (const detail::Reduction reduction : {detail::Reduction::host, detail::Reduction::nccl}) {
    detail::run_thread_ranks({0, 1}, [&](detail::Communicator& comm) {
      detail::select_rank_device(comm, Device::cuda);
      const RowSpan span = split_rows(data.n, comm.rank(), comm.size());
      SessionOptions options;
      options.loss = Loss::cross_entropy;
      options.device = Device::cuda;
      detail::RankBackend rank = detail::make_rank_backend(comm, options, part_of(data, span.first, span.count), reduction);
      ProfileOptions profile_options;
      profile_options.loss = options.loss;
      const Profile profile = rank.backend->profile(model, profile_options);
      std::vector<double> out(block.size());
      rank.backend->covariance_apply(model, profile.param_mean, block.data(), out.data(), 3);
      if (comm.rank() == 0) {
        std::lock_guard lock(mutex);
        products[rank.reduction] = out;
      }
      return 0;
    });
  }
  ASSERT_EQ(products.count("nccl"), 1u);
  ASSERT_EQ(products.count("host"), 1u);
  EXPECT_EQ(products["nccl"], products["host"]);
}

}  // namespace
}  // namespace gradnoise
