// The pieces of an MPI run that one process can check (docs/MPI.md): the
// row split, and the merge of the parts' partial moments in the ranks' tree
// order against the one-pass profile of the whole data, for every loss and
// on an ill-conditioned problem; the single-process communicator. The runs
// under mpiexec themselves are tests/test_mpi.py (ctest Mpi.*).
#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>

#include "comm.hpp"
#include "distributed.hpp"
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
  for (int step = 1; step < parts; step *= 2) {
    for (int r = 0; r + step < parts; r += 2 * step) detail::merge_profile_moments(moments[r], moments[r + step], model, true);
  }
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

}  // namespace
}  // namespace gradnoise
