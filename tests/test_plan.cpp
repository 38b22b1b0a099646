// The GPU profile's plan (core/plan.hpp): what each path launches and moves
// through device memory, held to the bandwidth floor on the CPU. The fused
// linear kernel on resident data must read the data once and launch a fixed
// handful of kernels whatever N; streamed rows and the GEMM pipeline cost what
// their plans say, several times the floor, which is why a session keeps its
// data on the device and linear models with few outputs take the fused path.
#include <gtest/gtest.h>

#include <string>

#include "gradnoise/profile.hpp"
#include "plan.hpp"
#include "policy.hpp"
#include "test_util.hpp"

namespace gradnoise {
namespace {

using detail::PassShape;
using detail::profile_pass_plan;
using detail::RowOrigin;
using testing::random_model;

TEST(GpuPlan, ResidentLinearProfileReadsTheDataOnceWithAFixedNumberOfLaunches) {
  for (const std::int64_t d : {256, 784, 1024}) {
    for (const std::int64_t k : {1, 10, 16}) {
      for (const bool labels : {false, true}) {
        SCOPED_TRACE("D=" + std::to_string(d) + " K=" + std::to_string(k) + (labels ? " ce" : " mse"));
        const Model model = random_model({d, k}, true, 1);
        ASSERT_TRUE(detail::use_fused_linear(model, ProfileOptions{}, 227 << 10));  // an H100's opt-in
        PassShape shape;
        shape.n = std::int64_t{1} << 22;
        shape.labels = labels;
        shape.fused = true;
        shape.origin = RowOrigin::resident;
        const detail::PassPlan plan = profile_pass_plan(model, shape);
        EXPECT_EQ(plan.min_bytes, shape.n * d * 4 + (labels ? shape.n * 4 : shape.n * k * 4));
        EXPECT_GE(plan.dram_bytes, plan.min_bytes);
        EXPECT_LE(static_cast<double>(plan.dram_bytes), 1.05 * static_cast<double>(plan.min_bytes));
        EXPECT_EQ(plan.chunks, 1);
        EXPECT_EQ(plan.launches, 2);  // the kernel and the merge of its blocks
        shape.n = 4096;  // the launches do not grow or shrink with N
        EXPECT_EQ(profile_pass_plan(model, shape).launches, 2);
      }
    }
  }
}

TEST(GpuPlan, StreamedRowsAndTheTwoLayerPipelineCostSeveralFloors) {
  const Model linear = random_model({784, 10}, true, 1);
  PassShape shape;
  shape.n = std::int64_t{1} << 20;
  shape.labels = true;
  shape.fused = true;
  shape.chunk_rows = detail::kDefaultGpuChunkRows;
  shape.origin = RowOrigin::host;
  const detail::PassPlan streamed = profile_pass_plan(linear, shape);
  shape.origin = RowOrigin::resident;
  const detail::PassPlan resident = profile_pass_plan(linear, shape);
  // Streamed float64 rows are written by the copy and read by the kernel:
  // four times the resident float32 floor, and a launch per chunk.
  EXPECT_GT(static_cast<double>(streamed.dram_bytes), 3.9 * static_cast<double>(resident.min_bytes));
  EXPECT_EQ(streamed.chunks, shape.n / detail::kDefaultGpuChunkRows);
  EXPECT_EQ(streamed.launches, streamed.chunks + 1);
  EXPECT_LT(resident.launches, streamed.launches);

  const Model two_layer = random_model({784, 256, 10}, true, 1);
  shape.fused = false;
  const detail::PassPlan pipeline = profile_pass_plan(two_layer, shape);
  EXPECT_GT(pipeline.dram_bytes, 8 * pipeline.min_bytes);  // float64 copies and GEMM traffic
  EXPECT_EQ(pipeline.chunks, shape.n / detail::kDefaultGpuChunkRows);
  // Without param stats the shifted scheme: about 20 launches a chunk (the
  // shift's column means once), where chunk-centring takes more than 40
  // without its param stats' own and about 70 with them.
  EXPECT_GT(pipeline.launches / pipeline.chunks, 20);
  EXPECT_LT(pipeline.launches / pipeline.chunks, 25);
  shape.param_stats = true;
  const detail::PassPlan centred = profile_pass_plan(two_layer, shape);
  EXPECT_EQ(centred.launches % centred.chunks, 0);
  EXPECT_GT(centred.launches / centred.chunks, 60);
  EXPECT_GT(centred.dram_bytes, 3 * pipeline.dram_bytes);
}

}  // namespace
}  // namespace gradnoise
