// The GPU sweep engine for small models: every live run of a sweep advanced
// from one logged step to the next in one launch, one thread per run, each
// thread running the CPU-tested step functions of core/sweep_step.hpp.
//
// Bits: this file is compiled with -fmad=false (CMakeLists.txt), so no
// multiply-add is fused and +, ×, / round as on the CPU (nvcc's default
// IEEE division). The squared loss without label noise is then the CPU
// engine's arithmetic bit for bit. exp and log (cross-entropy) and sqrt of a
// log, sin and cos (label noise) are CUDA's libdevice, which may differ from
// glibc in the last ulp, so those runs agree with the CPU to rounding.
//
// Layout: the runs are interleaved (entry i of run r at [i·runs + r]) in θ,
// the velocities and the scratch, so the threads of a warp, which walk the
// same model shapes in step, touch neighbouring addresses. The data rows each
// thread reads are its own (random) ones; without replacement each thread
// evaluates its epoch permutation row by row (core/random.hpp), so beside
// the data the device holds O(runs · P), no runs × N table. Offsets are
// 64-bit throughout.
//
// Not yet run on a GPU: written and compiled for sm_90 on a machine without
// one; tests/test_sweep_cuda.cpp (GpuSweep.*) compares it with the CPU engine.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_support.hpp"
#include "cuda_entry.hpp"
#include "gradnoise/error.hpp"
#include "policy.hpp"
#include "sweep_step.hpp"

namespace gradnoise {

static_assert(kSweepCudaMaxLayers == sweep_step::kMaxLayers);

namespace {

using sweep_step::InterleavedRuns;
using sweep_step::Outcome;
using sweep_step::Problem;
using sweep_step::RunSpec;

constexpr int kThreadsPerBlock = detail::kSweepThreads;

/// Steps [from, to) of every run not yet diverged, one thread per run
/// (grid-stride), each doing what sweep_step::advance_interleaved does on the
/// CPU in SweepStepOnCpu.InterleavedRunsAreEachTheirCpuRun.
__global__ void __launch_bounds__(kThreadsPerBlock)
    sweep_advance_kernel(Problem problem, InterleavedRuns all, std::int64_t from, std::int64_t to) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t run = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       run < all.runs; run += stride) {
    sweep_step::advance_interleaved(problem, all, run, from, to);
  }
}

void require_sweep_device() {
  if (cuda_device_count() == 0) {
    throw RuntimeError("--device cuda was asked for, but no CUDA device is present; "
                       "use --device cpu or --device auto");
  }
}

}  // namespace

class SweepCudaState {
 public:
  explicit SweepCudaState(const SweepCudaSetup& setup) {
    const Model& model = *setup.model;
    const Dataset& train = *setup.train;
    if (model.num_layers() > kSweepCudaMaxLayers) {
      throw RuntimeError("the GPU sweep engine takes models of at most " +
                         std::to_string(kSweepCudaMaxLayers) + " layers, not " +
                         std::to_string(model.num_layers()) + "; use --device cpu");
    }
    const SweepConfig& config = *setup.config;
    runs_ = static_cast<std::int64_t>(setup.batch_sizes.size());
    problem_ = sweep_step::make_problem(model, train, config, setup.divergence_limit);
    const sweep_step::ModelDims& dims = problem_.model;
    params_ = dims.num_params;

    x_ = cuda::DeviceBuffer<double>(train.x.size());
    GN_CUDA_CHECK(cudaMemcpy(x_.data(), train.x.data(), train.x.size() * sizeof(double),
                             cudaMemcpyHostToDevice));
    if (loss_targets(config.loss) == TargetKind::real) {
      y_ = cuda::DeviceBuffer<double>(train.y.size());
      GN_CUDA_CHECK(cudaMemcpy(y_.data(), train.y.data(), train.y.size() * sizeof(double),
                               cudaMemcpyHostToDevice));
    } else {
      labels_ = cuda::DeviceBuffer<std::int32_t>(train.labels.size());
      GN_CUDA_CHECK(cudaMemcpy(labels_.data(), train.labels.data(),
                               train.labels.size() * sizeof(std::int32_t), cudaMemcpyHostToDevice));
    }
    problem_.x = x_.data();  // the device copies in place of the host arrays
    problem_.y = y_.data();
    problem_.labels = labels_.data();

    std::vector<RunSpec> specs(static_cast<std::size_t>(runs_));
    for (std::size_t run = 0; run < specs.size(); ++run) {
      specs[run] = {setup.batch_sizes[run], setup.lrs[run], setup.replicas[run]};
    }
    specs_ = cuda::DeviceBuffer<RunSpec>(specs.size());
    GN_CUDA_CHECK(cudaMemcpy(specs_.data(), specs.data(), specs.size() * sizeof(RunSpec),
                             cudaMemcpyHostToDevice));

    const auto state_size = static_cast<std::size_t>(runs_ * params_);
    theta_ = cuda::DeviceBuffer<double>(state_size);
    if (config.momentum > 0) velocity_ = cuda::DeviceBuffer<double>(state_size);
    scratch_ = cuda::DeviceBuffer<double>(
        static_cast<std::size_t>(runs_ * sweep_step::scratch_per_run(dims)));
    diverged_ = cuda::DeviceBuffer<std::uint8_t>(static_cast<std::size_t>(runs_));
    outcomes_ = cuda::DeviceBuffer<Outcome>(static_cast<std::size_t>(runs_));
  }

  std::vector<SweepRunOutcome> advance(std::vector<double>& theta, std::vector<double>& velocity,
                                       const std::vector<std::uint8_t>& diverged,
                                       std::int64_t from, std::int64_t to, cudaStream_t stream) {
    const auto state_size = static_cast<std::size_t>(runs_ * params_);
    if (theta.size() != state_size || diverged.size() != static_cast<std::size_t>(runs_) ||
        (velocity_.data() != nullptr && velocity.size() != state_size)) {
      throw RuntimeError("internal: the sweep state does not fit the GPU sweep engine");
    }
    // θ and the velocities are uploaded every segment (O(runs · P), small
    // beside the segment's O(runs · steps · b · P)), so the host copy stays
    // the one truth that logging, checkpoints and restores work on.
    staging_.resize(state_size);
    sweep_step::interleave(theta.data(), staging_.data(), runs_, params_);
    GN_CUDA_CHECK(cudaMemcpyAsync(theta_.data(), staging_.data(), state_size * sizeof(double),
                                  cudaMemcpyHostToDevice, stream));
    GN_CUDA_CHECK(cudaStreamSynchronize(stream));  // staging_ is reused below
    if (velocity_.data() != nullptr) {
      sweep_step::interleave(velocity.data(), staging_.data(), runs_, params_);
      GN_CUDA_CHECK(cudaMemcpyAsync(velocity_.data(), staging_.data(), state_size * sizeof(double),
                                    cudaMemcpyHostToDevice, stream));
    }
    GN_CUDA_CHECK(cudaMemcpyAsync(diverged_.data(), diverged.data(), diverged.size(),
                                  cudaMemcpyHostToDevice, stream));

    int device = 0, sms = 0;
    GN_CUDA_CHECK(cudaGetDevice(&device));
    GN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    const int threads = detail::sweep_threads_per_block(runs_, sms);
    const std::int64_t wanted = (runs_ + threads - 1) / threads;
    const auto blocks = static_cast<unsigned>(std::clamp<std::int64_t>(wanted, 1, detail::kSweepMaxBlocks));
    InterleavedRuns all;
    all.specs = specs_.data();
    all.runs = runs_;
    all.theta = theta_.data();
    all.velocity = velocity_.data();
    all.scratch = scratch_.data();
    all.diverged = diverged_.data();
    all.outcomes = outcomes_.data();
    sweep_advance_kernel<<<blocks, threads, 0, stream>>>(problem_, all, from, to);
    GN_CUDA_CHECK(cudaGetLastError());

    std::vector<Outcome> outcomes(static_cast<std::size_t>(runs_));
    GN_CUDA_CHECK(cudaMemcpyAsync(outcomes.data(), outcomes_.data(), outcomes.size() * sizeof(Outcome),
                                  cudaMemcpyDeviceToHost, stream));
    GN_CUDA_CHECK(cudaMemcpyAsync(staging_.data(), theta_.data(), state_size * sizeof(double),
                                  cudaMemcpyDeviceToHost, stream));
    GN_CUDA_CHECK(cudaStreamSynchronize(stream));
    sweep_step::deinterleave(staging_.data(), theta.data(), runs_, params_);
    if (velocity_.data() != nullptr) {
      GN_CUDA_CHECK(cudaMemcpyAsync(staging_.data(), velocity_.data(), state_size * sizeof(double),
                                    cudaMemcpyDeviceToHost, stream));
      GN_CUDA_CHECK(cudaStreamSynchronize(stream));
      sweep_step::deinterleave(staging_.data(), velocity.data(), runs_, params_);
    }

    std::vector<SweepRunOutcome> result(outcomes.size());
    for (std::size_t run = 0; run < outcomes.size(); ++run) {
      result[run].steps = outcomes[run].steps;
      result[run].diverged_step = outcomes[run].step;
      result[run].loss_diverged = outcomes[run].why == sweep_step::Stop::minibatch_loss;
      result[run].loss = outcomes[run].loss;
    }
    return result;
  }

 private:
  Problem problem_;
  std::int64_t runs_ = 0, params_ = 0;
  cuda::DeviceBuffer<double> x_, y_;
  cuda::DeviceBuffer<std::int32_t> labels_;
  cuda::DeviceBuffer<RunSpec> specs_;
  cuda::DeviceBuffer<double> theta_, velocity_, scratch_;
  cuda::DeviceBuffer<std::uint8_t> diverged_;
  cuda::DeviceBuffer<Outcome> outcomes_;
  std::vector<double> staging_;
};

void SweepCudaStateDeleter::operator()(SweepCudaState* state) const { delete state; }

SweepCudaStatePtr sweep_cuda_create(const SweepCudaSetup& setup) {
  require_sweep_device();
  return SweepCudaStatePtr(new SweepCudaState(setup));
}

std::vector<SweepRunOutcome> sweep_advance_cuda(SweepCudaState& state, std::vector<double>& theta,
                                                std::vector<double>& velocity,
                                                const std::vector<std::uint8_t>& diverged,
                                                std::int64_t from, std::int64_t to,
                                                CUstream_st* stream) {
  return state.advance(theta, velocity, diverged, from, to, stream);
}

}  // namespace gradnoise
