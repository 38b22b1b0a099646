// GPU benchmark of the CUDA profile on device-resident float32 data, against
// the floors measured in the same run: a device-to-device copy and a CUB
// device reduction of the same bytes, and (two-layer) the cuBLAS GEMMs of the
// forward and backward pass alone. Every configuration is first checked
// against the float64 CPU backend on a subset; a configuration that does not
// agree prints no time.
//
// Then a session's resident data (gradnoise::Profiler on the GPU): the time
// per profile call, host to host, for small and Fashion-MNIST-sized data.
//
//   bench_cuda_profile [--n N] [--reps R] [--csv out.csv]
#include <cub/device/device_reduce.cuh>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "cuda_support.hpp"
#include "cuda_entry.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "gradnoise/session.hpp"
#include "linear_fused.cuh"
#include "plan.hpp"
#include "policy.hpp"

namespace gradnoise {
namespace {

using cuda::DeviceBuffer;

/// Deterministic pseudo-random values in [-1, 1) + offset, without a host copy.
__global__ void fill_kernel(float* out, std::int64_t count, std::uint32_t seed, float offset) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(j) * 2654435761u ^ seed ^
                      static_cast<std::uint32_t>(j >> 32) * 40503u;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    out[j] = offset + (static_cast<float>(h >> 8) * (1.0f / 8388608.0f) - 1.0f);
  }
}

/// A host data set of uniform inputs and, by loss, real targets or labels.
Dataset synthetic_host_data(std::int64_t n, std::int64_t d, std::int64_t k, Loss loss) {
  Dataset data;
  data.n = n;
  data.d = d;
  data.k = k;
  data.x.resize(static_cast<std::size_t>(n * d));
  std::uint64_t state = 0x9e3779b97f4a7c15ull;
  const auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return static_cast<double>(state >> 11) * 0x1.0p-53 - 0.5;
  };
  for (double& v : data.x) v = next();
  if (loss_targets(loss) == TargetKind::labels) {
    data.labels.resize(static_cast<std::size_t>(n));
    for (std::int64_t i = 0; i < n; ++i) data.labels[i] = static_cast<std::int32_t>(i % k);
  } else {
    data.y.resize(static_cast<std::size_t>(n * k));
    for (double& v : data.y) v = next();
  }
  return data;
}

int blocks_for(std::int64_t count) {
  return static_cast<int>(std::min<std::int64_t>((count + 255) / 256, 65536));
}

/// Median seconds of `reps` timed runs after one warm-up, L2 flushed before each.
template <typename F>
double median_seconds(int reps, DeviceBuffer<char>& flush, F&& run) {
  run();
  GN_CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<double> times;
  cudaEvent_t start, stop;
  GN_CUDA_CHECK(cudaEventCreate(&start));
  GN_CUDA_CHECK(cudaEventCreate(&stop));
  for (int r = 0; r < reps; ++r) {
    GN_CUDA_CHECK(cudaMemsetAsync(flush.data(), r, flush.size()));
    GN_CUDA_CHECK(cudaEventRecord(start));
    run();
    GN_CUDA_CHECK(cudaEventRecord(stop));
    GN_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    GN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

/// The first `rows` rows of device data, as a host Dataset for the CPU check.
Dataset host_subset(const DeviceData& dev, std::int64_t rows) {
  Dataset out;
  out.n = rows;
  out.d = dev.d;
  out.k = dev.k;
  std::vector<float> x(static_cast<std::size_t>(rows * dev.d));
  GN_CUDA_CHECK(cudaMemcpy(x.data(), dev.x, x.size() * sizeof(float), cudaMemcpyDeviceToHost));
  out.x.assign(x.begin(), x.end());
  if (dev.labels != nullptr) {
    out.labels.resize(static_cast<std::size_t>(rows));
    GN_CUDA_CHECK(cudaMemcpy(out.labels.data(), dev.labels, rows * sizeof(std::int32_t),
                             cudaMemcpyDeviceToHost));
  } else {
    std::vector<float> y(static_cast<std::size_t>(rows * dev.k));
    GN_CUDA_CHECK(cudaMemcpy(y.data(), dev.y, y.size() * sizeof(float), cudaMemcpyDeviceToHost));
    out.y.assign(y.begin(), y.end());
  }
  return out;
}

bool agrees(const Model& model, const DeviceData& dev, const ProfileOptions& options) {
  DeviceData subset = dev;
  subset.n = std::min<std::int64_t>(dev.n, 1 << 14);
  const Profile got = profile_cuda_device(model, subset, options);
  const Profile want = profile_cpu(model, host_subset(dev, subset.n), options);
  const auto rel = [](double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-300); };
  const bool ok = rel(got.grad_norm_sq, want.grad_norm_sq) <= 1e-5 &&
                  rel(got.trace_cov, want.trace_cov) <= 1e-4 && rel(got.loss, want.loss) <= 1e-5;
  if (!ok) {
    std::fprintf(stderr, "  MISMATCH vs CPU: ‖G‖² %.17g vs %.17g, tr Σ %.17g vs %.17g\n",
                 got.grad_norm_sq, want.grad_norm_sq, got.trace_cov, want.trace_cov);
  }
  return ok;
}

/// A session on the GPU keeps its data on the device: the time of one
/// profile call (host to host, the median of many) once the data is there.
void session_timings(int reps) {
  struct Case {
    std::int64_t n, d, k;
    Loss loss;
  };
  std::printf("\n| session (resident float32), loss | N | D | K | first call ms (upload) | per call us |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const Case& c :
       {Case{4096, 256, 1, Loss::squared}, Case{std::int64_t{1} << 20, 784, 10, Loss::cross_entropy}}) {
    Dataset data = synthetic_host_data(c.n, c.d, c.k, c.loss);
    SessionOptions options;
    options.loss = c.loss;
    options.device = Device::cuda;
    Profiler session(std::move(data), options);
    const std::vector<std::int64_t> widths = {c.d, c.k};
    const Model model = make_model(widths, true, Init::gaussian, 0);
    const auto start = std::chrono::steady_clock::now();
    session.profile(model);
    const double first = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const int calls = c.n <= 4096 ? 200 * reps : 4 * reps;
    std::vector<double> times;
    for (int r = 0; r < calls; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      session.profile(model);
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(times.begin(), times.end());
    std::printf("| %s | %lld | %lld | %lld | %.2f | %.1f |\n", loss_name(c.loss).c_str(),
                static_cast<long long>(c.n), static_cast<long long>(c.d), static_cast<long long>(c.k),
                first * 1e3, times[times.size() / 2] * 1e6);
  }
}

int bench_main(int argc, char** argv) {
  std::int64_t n = std::int64_t{1} << 22;
  int reps = 5;
  std::string csv_path;
  for (int a = 1; a + 1 < argc; a += 2) {
    if (!std::strcmp(argv[a], "--n")) n = std::atoll(argv[a + 1]);
    if (!std::strcmp(argv[a], "--reps")) reps = std::atoi(argv[a + 1]);
    if (!std::strcmp(argv[a], "--csv")) csv_path = argv[a + 1];
  }
  if (cuda_device_count() == 0) {
    std::printf("no CUDA device present: nothing to measure\n");
    return 0;
  }
  try {
    std::printf("# gradnoise CUDA profile benchmark on %s, N = %lld, median of %d\n",
                cuda_device_name().c_str(), static_cast<long long>(n), reps);
    std::printf("# each timed profile includes its set-up (allocations, cuBLAS handle)\n\n");
    std::printf("| model | D | K | H | time ms | GB read | GB/s | vs copy | vs CUB reduce | vs GEMMs |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
    std::ofstream csv;
    if (!csv_path.empty()) {
      csv.open(csv_path);
      csv << "model,n,d,k,h,seconds,bytes,gbps,copy_gbps,reduce_gbps,gemm_seconds\n";
    }
    DeviceBuffer<char> flush(std::size_t{256} << 20);  // larger than any L2
    cuda::CublasHandle cublas(nullptr);

    struct Config {
      std::int64_t d, k, h;
    };
    const std::vector<Config> configs = {{256, 1, 0},  {256, 10, 0},  {256, 100, 0},
                                         {784, 1, 0},  {784, 10, 0},
                                         {1024, 1, 0}, {1024, 10, 0}, {1024, 100, 0},
                                         {784, 10, 256}, {784, 10, 1024}};
    for (const Config& c : configs) {
      DeviceBuffer<float> x(static_cast<std::size_t>(n * c.d));
      DeviceBuffer<float> y(static_cast<std::size_t>(n * c.k));
      fill_kernel<<<blocks_for(n * c.d), 256>>>(x.data(), n * c.d, 1u, 0.25f);
      fill_kernel<<<blocks_for(n * c.k), 256>>>(y.data(), n * c.k, 2u, 0.0f);
      GN_CUDA_CHECK(cudaGetLastError());
      DeviceData dev{n, c.d, c.k, x.data(), y.data(), nullptr};
      std::vector<std::int64_t> widths = {c.d};
      if (c.h > 0) widths.push_back(c.h);
      widths.push_back(c.k);
      const Model model = make_model(widths, true, Init::gaussian, 0);
      ProfileOptions options;
      options.chunk_rows = 1 << 16;
      const std::string name = c.h > 0 ? "two-layer" : "linear";
      if (!agrees(model, dev, options)) {
        std::printf("| %s | %lld | %lld | %lld | (disagrees with CPU: no time) |\n", name.c_str(),
                    static_cast<long long>(c.d), static_cast<long long>(c.k),
                    static_cast<long long>(c.h));
        continue;
      }
      const double bytes = static_cast<double>(n) * static_cast<double>(c.d + c.k) * sizeof(float);
      const double t = median_seconds(reps, flush, [&] { profile_cuda_device(model, dev, options); });

      DeviceBuffer<float> copy(x.size());
      const double t_copy = median_seconds(reps, flush, [&] {
        GN_CUDA_CHECK(cudaMemcpyAsync(copy.data(), x.data(), x.size() * sizeof(float),
                                      cudaMemcpyDeviceToDevice));
      });
      DeviceBuffer<float> sum(1);
      std::size_t temp_bytes = 0;
      GN_CUDA_CHECK(cub::DeviceReduce::Sum(nullptr, temp_bytes, x.data(), sum.data(), n * c.d));
      DeviceBuffer<char> temp(temp_bytes);
      const double t_reduce = median_seconds(reps, flush, [&] {
        GN_CUDA_CHECK(cub::DeviceReduce::Sum(temp.data(), temp_bytes, x.data(), sum.data(), n * c.d));
      });
      const double x_bytes = static_cast<double>(n) * static_cast<double>(c.d) * sizeof(float);
      const double copy_gbps = 2 * x_bytes / t_copy * 1e-9;  // read + write
      const double reduce_gbps = x_bytes / t_reduce * 1e-9;

      double t_gemm = 0;
      if (c.h > 0) {
        // The GEMMs any exact method needs, in float64 like the pipeline, on
        // chunks of the same size: forward (X W_1ᵀ, H W_2ᵀ), backward (δ_2 W_2)
        // and the layer-1 product over the chunk (δ_1ᵀ X). The values are zeros:
        // GEMM time does not depend on them.
        const std::int64_t m = options.chunk_rows;
        DeviceBuffer<double> a(static_cast<std::size_t>(m * c.d)), w1(static_cast<std::size_t>(c.h * c.d)),
            h1(static_cast<std::size_t>(m * c.h)), w2(static_cast<std::size_t>(c.k * c.h)),
            z(static_cast<std::size_t>(m * c.k)), d1(static_cast<std::size_t>(m * c.h)),
            g1(static_cast<std::size_t>(c.h * c.d));
        for (auto* buffer : {&a, &w1, &h1, &w2, &z, &d1}) {
          GN_CUDA_CHECK(cudaMemset(buffer->data(), 0, buffer->size() * sizeof(double)));
        }
        const double one = 1, zero = 0;
        t_gemm = median_seconds(reps, flush, [&] {
          for (std::int64_t first = 0; first < n; first += m) {
            const int rows = static_cast<int>(std::min(m, n - first));
            const int d = static_cast<int>(c.d), h = static_cast<int>(c.h), k = static_cast<int>(c.k);
            GN_CUBLAS_CHECK(cublasDgemm(cublas.get(), CUBLAS_OP_T, CUBLAS_OP_N, h, rows, d, &one,
                                        w1.data(), d, a.data(), d, &zero, h1.data(), h));
            GN_CUBLAS_CHECK(cublasDgemm(cublas.get(), CUBLAS_OP_T, CUBLAS_OP_N, k, rows, h, &one,
                                        w2.data(), h, h1.data(), h, &zero, z.data(), k));
            GN_CUBLAS_CHECK(cublasDgemm(cublas.get(), CUBLAS_OP_N, CUBLAS_OP_N, h, rows, k, &one,
                                        w2.data(), h, z.data(), k, &zero, d1.data(), h));
            GN_CUBLAS_CHECK(cublasDgemm(cublas.get(), CUBLAS_OP_N, CUBLAS_OP_T, d, h, rows, &one,
                                        a.data(), d, d1.data(), h, &zero, g1.data(), d));
          }
        });
      }
      detail::PassShape shape;
      shape.n = n;
      shape.fused = cuda::use_fused_linear(model, options);
      shape.chunk_rows = options.chunk_rows;
      int device = 0, sms = 0;
      GN_CUDA_CHECK(cudaGetDevice(&device));
      GN_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
      shape.sms = sms;
      const detail::PassPlan plan = detail::profile_pass_plan(model, shape);
      std::printf("<!-- plan: %s, %lld launches, %.2f GB through DRAM = %.2f x the floor -->\n",
                  plan.fused ? "fused" : "pipeline", static_cast<long long>(plan.launches),
                  static_cast<double>(plan.dram_bytes) * 1e-9,
                  static_cast<double>(plan.dram_bytes) / static_cast<double>(plan.min_bytes));
      const double gbps = bytes / t * 1e-9;
      std::printf("| %s | %lld | %lld | %lld | %.3f | %.2f | %.1f | %.2f | %.2f | %s |\n", name.c_str(),
                  static_cast<long long>(c.d), static_cast<long long>(c.k),
                  static_cast<long long>(c.h), t * 1e3, bytes * 1e-9, gbps, gbps / copy_gbps,
                  gbps / reduce_gbps, c.h > 0 ? std::to_string(t / t_gemm).c_str() : "-");
      if (csv.is_open()) {
        csv << name << ',' << n << ',' << c.d << ',' << c.k << ',' << c.h << ',' << t << ','
            << bytes << ',' << gbps << ',' << copy_gbps << ',' << reduce_gbps << ',' << t_gemm << '\n';
      }
    }
    session_timings(reps);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cuda_profile: %s\n", e.what());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace gradnoise

int main(int argc, char** argv) { return gradnoise::bench_main(argc, argv); }
