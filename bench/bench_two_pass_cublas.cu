// The two-pass cuBLAS baseline of the comparison benchmark
// (scripts/bench-compare): how a careful CUDA user computes ‖G‖² and the
// centred tr Σ of a linear model with GEMMs, for the bandwidth comparison with
// gradnoise's one-read fused kernel. Float32 GEMMs (no TF32), float64 sums.
//
//   pass 1, per chunk of rows:  Z = X Wᵀ (GEMM), δ = ∂ℓ/∂f from Z + b,
//                               G += δᵀ [X 1] (GEMM + GEMV, accumulated in float64)
//   pass 2, per chunk of rows:  [Z T] = X [W; G]ᵀ (one GEMM), then per row
//                               ‖g_i − G‖² = ‖δ_i‖²(‖x_i‖² + 1) − 2 δ_i·(T_i + G_b) + ‖G‖²
//
// X is read four times (two GEMMs in pass 1, one GEMM and the row norms in
// pass 2), against once for gradnoise's fused kernel. Data are the
// hash-defined values of bench/synthetic_data.hpp, made on the device; prints
// one JSON line like bench_profile_once.
//
//   bench_two_pass_cublas --weights DIR --n N [--loss mse|ce] [--seed S]
//                         [--reps R] [--warmup W] [--chunk-rows C] [--no-flush]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cuda_support.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"
#include "synthetic_data.hpp"

namespace {

namespace fs = std::filesystem;
using gradnoise::cuda::DeviceBuffer;
using nlohmann::json;

constexpr int kWarpsPerBlock = 8;

struct Options {
  fs::path weights_dir;
  std::int64_t n = 0;
  bool cross_entropy = false;
  std::uint32_t seed = 0;
  int reps = 5;
  int warmup = 1;
  std::int64_t chunk_rows = std::int64_t{1} << 16;
  bool flush = true;
};

[[noreturn]] void usage_error(const std::string& sentence) {
  std::fprintf(stderr, "bench_two_pass_cublas: %s\n", sentence.c_str());
  std::exit(2);
}

std::int64_t parse_int(const std::string& flag, const char* text) {
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0') usage_error(flag + " expects an integer, got '" + text + "'.");
  return value;
}

Options parse_options(int argc, char** argv) {
  Options o;
  for (int a = 1; a < argc; ++a) {
    const std::string flag = argv[a];
    if (flag == "--no-flush") {
      o.flush = false;
      continue;
    }
    if (a + 1 >= argc) usage_error(flag + " needs a value.");
    const char* value = argv[++a];
    if (flag == "--weights") o.weights_dir = value;
    else if (flag == "--n") o.n = parse_int(flag, value);
    else if (flag == "--loss") {
      if (std::strcmp(value, "mse") && std::strcmp(value, "ce")) usage_error("--loss expects mse or ce.");
      o.cross_entropy = !std::strcmp(value, "ce");
    } else if (flag == "--seed") o.seed = static_cast<std::uint32_t>(parse_int(flag, value));
    else if (flag == "--reps") o.reps = static_cast<int>(parse_int(flag, value));
    else if (flag == "--warmup") o.warmup = static_cast<int>(parse_int(flag, value));
    else if (flag == "--chunk-rows") o.chunk_rows = parse_int(flag, value);
    else usage_error("unknown flag '" + flag + "'.");
  }
  if (o.weights_dir.empty()) usage_error("give --weights DIR (W1.npy and b1.npy of a linear model).");
  if (o.n < 2 || o.reps < 1 || o.warmup < 0 || o.chunk_rows < 1) {
    usage_error("--n must be at least 2, --reps and --chunk-rows at least 1, --warmup at least 0.");
  }
  return o;
}

__global__ void fill_inputs(float* x, std::int64_t n, std::int64_t d, std::uint32_t seed) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < n * d;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    x[j] = gradnoise::bench::input_value(j / d, j % d, d, seed);
  }
}

__global__ void fill_targets(float* y, std::int32_t* labels, std::int64_t n, std::int64_t k,
                             std::uint32_t seed) {
  const std::int64_t count = y != nullptr ? n * k : n;
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    if (y != nullptr) y[j] = gradnoise::bench::target_value(j / k, j % k, k, seed);
    else labels[j] = gradnoise::bench::label_value(j, k, seed);
  }
}

__device__ double warp_sum(double v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

/// Adds each warp's lane-0 value into *total with one atomic per block.
__device__ void block_add(double warp_value, double* total) {
  __shared__ double partial[kWarpsPerBlock];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) partial[warp] = warp_value;
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0;
    for (int w = 0; w < kWarpsPerBlock; ++w) sum += partial[w];
    atomicAdd(total, sum);
  }
  __syncthreads();
}

/// Output error of one row (a warp per row): z holds f(x_i) − b on entry
/// (stride `ld`), δ_i on exit; returns the row's loss on every lane.
__device__ double row_delta(float* z, const float* bias, const float* y, const std::int32_t* labels,
                            std::int64_t row, int k) {
  const int lane = threadIdx.x % 32;
  if (y != nullptr) {
    double loss = 0;
    for (int c = lane; c < k; c += 32) {
      const float delta = z[c] + bias[c] - y[row * k + c];
      z[c] = delta;
      loss += 0.5 * static_cast<double>(delta) * delta;
    }
    return warp_sum(loss);
  }
  float top = -INFINITY;
  for (int c = lane; c < k; c += 32) top = fmaxf(top, z[c] + bias[c]);
  top = warp_max(top);
  double total = 0;
  for (int c = lane; c < k; c += 32) total += std::exp(static_cast<double>(z[c] + bias[c] - top));
  total = warp_sum(total);
  const int label = labels[row];
  double label_logit = 0;
  for (int c = lane; c < k; c += 32) {
    const float logit = z[c] + bias[c];
    if (c == label) label_logit = logit;
    z[c] = static_cast<float>(std::exp(static_cast<double>(logit - top)) / total) - (c == label ? 1.0f : 0.0f);
  }
  label_logit = warp_sum(label_logit);
  return std::log(total) + top - label_logit;
}

/// Pass 1: Z (m×k) becomes δ; adds the chunk's losses to *loss_sum.
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    delta_kernel(float* z, const float* bias, const float* y, const std::int32_t* labels,
                 std::int64_t first, std::int64_t m, int k, double* loss_sum) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  double loss = 0;
  if (i < m) loss = row_delta(z + i * k, bias, y, labels, first + i, k);
  block_add(threadIdx.x % 32 == 0 ? loss : 0.0, loss_sum);
}

/// Pass 2: rows of zt are [Z_i T_i] (2k); adds ‖g_i − G‖² and ‖g_i‖² to sums[0], sums[1].
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    norm_kernel(const float* x, float* zt, const float* bias, const float* y,
                const std::int32_t* labels, const float* grad_bias, const double* grad_norm_sq,
                std::int64_t first, std::int64_t m, int d, int k, double* sums) {
  const std::int64_t i = blockIdx.x * static_cast<std::int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  double centred = 0, uncentred = 0;
  if (i < m) {
    float x_sq = 0;
    const float* xi = x + (first + i) * static_cast<std::int64_t>(d);
    for (int j = lane; j < d; j += 32) x_sq += xi[j] * xi[j];
    const double x_tilde_sq = warp_sum(static_cast<double>(x_sq)) + 1.0;
    float* row = zt + i * 2 * k;
    row_delta(row, bias, y, labels, first + i, k);
    __syncwarp();
    double delta_sq = 0, delta_t = 0;
    for (int c = lane; c < k; c += 32) {
      delta_sq += static_cast<double>(row[c]) * row[c];
      delta_t += static_cast<double>(row[c]) * (static_cast<double>(row[k + c]) + grad_bias[c]);
    }
    delta_sq = warp_sum(delta_sq);
    delta_t = warp_sum(delta_t);
    uncentred = delta_sq * x_tilde_sq;
    centred = uncentred - 2 * delta_t + *grad_norm_sq;
  }
  block_add(lane == 0 ? centred : 0.0, sums);
  block_add(lane == 0 ? uncentred : 0.0, sums + 1);
}

__global__ void accumulate(double* total, const float* part, std::int64_t count) {
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    total[j] += part[j];
  }
}

/// G = sum / n into float32 copies (the pass-2 GEMM operand and G_b), and ‖G‖².
__global__ void finish_mean(const double* sum, std::int64_t count_w, std::int64_t k, std::int64_t n,
                            float* g_w, float* g_b, double* grad_norm_sq) {
  double local = 0;
  for (std::int64_t j = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; j < count_w + k;
       j += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const double g = sum[j] / static_cast<double>(n);
    if (j < count_w) g_w[j] = static_cast<float>(g);
    else g_b[j - count_w] = static_cast<float>(g);
    local += g * g;
  }
  block_add(warp_sum(local), grad_norm_sq);
}

/// Blocks for a grid-stride loop over `count` elements.
int blocks_for(std::int64_t count, int threads) {
  return static_cast<int>(std::min<std::int64_t>((count + threads - 1) / threads, 65536));
}

/// Blocks for a warp-per-row kernel: every row gets its warp.
unsigned row_blocks(std::int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

struct Result {
  double loss = 0, grad_norm_sq = 0, trace_cov = 0, mean_sample_grad_norm_sq = 0;
};

/// One full two-pass computation; every buffer is allocated inside, as
/// gradnoise's profile allocates inside its call.
Result two_pass(cublasHandle_t handle, const float* x, const float* y, const std::int32_t* labels,
                const std::vector<float>& weight_host, const std::vector<float>& bias_host, std::int64_t n,
                int d, int k, std::int64_t chunk_rows) {
  const std::int64_t m_max = std::min(chunk_rows, n);
  DeviceBuffer<float> wg(static_cast<std::size_t>(2 * k) * d);  // [W; G], row-major 2k×d
  DeviceBuffer<float> bias(k), grad_bias(k), zt(static_cast<std::size_t>(m_max) * 2 * k),
      grad_part(static_cast<std::size_t>(k) * d + k), ones(static_cast<std::size_t>(m_max));
  DeviceBuffer<double> grad_sum(static_cast<std::size_t>(k) * d + k), scalars(4);
  GN_CUDA_CHECK(cudaMemcpy(wg.data(), weight_host.data(), weight_host.size() * sizeof(float), cudaMemcpyHostToDevice));
  GN_CUDA_CHECK(cudaMemcpy(bias.data(), bias_host.data(), k * sizeof(float), cudaMemcpyHostToDevice));
  GN_CUDA_CHECK(cudaMemset(grad_sum.data(), 0, grad_sum.size() * sizeof(double)));
  GN_CUDA_CHECK(cudaMemset(scalars.data(), 0, scalars.size() * sizeof(double)));
  const std::vector<float> ones_host(static_cast<std::size_t>(m_max), 1.0f);
  GN_CUDA_CHECK(cudaMemcpy(ones.data(), ones_host.data(), m_max * sizeof(float), cudaMemcpyHostToDevice));
  double* loss_sum = scalars.data();
  double* grad_norm_sq = scalars.data() + 1;
  double* norm_sums = scalars.data() + 2;  // Σ‖g_i − G‖², Σ‖g_i‖²
  const float one = 1, zero = 0;
  const int threads = kWarpsPerBlock * 32;

  // Pass 1: G.
  for (std::int64_t first = 0; first < n; first += m_max) {
    const int m = static_cast<int>(std::min(m_max, n - first));
    const float* xc = x + first * d;
    GN_CUBLAS_CHECK(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, k, m, d, &one, wg.data(), d, xc, d,
                                &zero, zt.data(), k));
    delta_kernel<<<row_blocks(m), threads>>>(zt.data(), bias.data(), y, labels, first, m, k,
                                                             loss_sum);
    GN_CUDA_CHECK(cudaGetLastError());
    GN_CUBLAS_CHECK(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_T, d, k, m, &one, xc, d, zt.data(), k,
                                &zero, grad_part.data(), d));
    GN_CUBLAS_CHECK(cublasSgemv(handle, CUBLAS_OP_N, k, m, &one, zt.data(), k, ones.data(), 1, &zero,
                                grad_part.data() + static_cast<std::int64_t>(k) * d, 1));
    accumulate<<<blocks_for(grad_sum.size(), 256), 256>>>(grad_sum.data(), grad_part.data(),
                                                          static_cast<std::int64_t>(grad_sum.size()));
    GN_CUDA_CHECK(cudaGetLastError());
  }
  finish_mean<<<blocks_for(grad_sum.size(), threads), threads>>>(
      grad_sum.data(), static_cast<std::int64_t>(k) * d, k, n,
      wg.data() + static_cast<std::int64_t>(k) * d, grad_bias.data(), grad_norm_sq);
  GN_CUDA_CHECK(cudaGetLastError());

  // Pass 2: centred per-sample norms.
  for (std::int64_t first = 0; first < n; first += m_max) {
    const int m = static_cast<int>(std::min(m_max, n - first));
    GN_CUBLAS_CHECK(cublasSgemm(handle, CUBLAS_OP_T, CUBLAS_OP_N, 2 * k, m, d, &one, wg.data(), d,
                                x + first * d, d, &zero, zt.data(), 2 * k));
    norm_kernel<<<row_blocks(m), threads>>>(x, zt.data(), bias.data(), y, labels,
                                                            grad_bias.data(), grad_norm_sq, first, m, d, k,
                                                            norm_sums);
    GN_CUDA_CHECK(cudaGetLastError());
  }
  double host[4];
  GN_CUDA_CHECK(cudaMemcpy(host, scalars.data(), sizeof(host), cudaMemcpyDeviceToHost));
  const double inv_n = 1.0 / static_cast<double>(n);
  return {host[0] * inv_n, host[1], host[2] * inv_n, host[3] * inv_n};
}

json run(const Options& o) {
  const gradnoise::Array w = gradnoise::read_npy(o.weights_dir / "W1.npy");
  if (fs::exists(o.weights_dir / "W2.npy") || !fs::exists(o.weights_dir / "b1.npy")) {
    return {{"status", "skipped"}, {"note", "the two-pass cuBLAS baseline covers linear models with a bias only"}};
  }
  const gradnoise::Array b = gradnoise::read_npy(o.weights_dir / "b1.npy");
  const int k = static_cast<int>(w.rows()), d = static_cast<int>(w.cols());
  if (o.cross_entropy && k < 2) usage_error("--loss ce needs at least two classes (K ≥ 2).");
  const std::vector<float> weight(w.values.begin(), w.values.end());
  const std::vector<float> bias(b.values.begin(), b.values.end());
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    return {{"status", "error"}, {"note", "no CUDA device present"}};
  }
  cudaDeviceProp prop{};
  GN_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));

  DeviceBuffer<float> x, y;
  DeviceBuffer<std::int32_t> labels;
  try {
    x = DeviceBuffer<float>(static_cast<std::size_t>(o.n) * d);
    if (o.cross_entropy) labels = DeviceBuffer<std::int32_t>(static_cast<std::size_t>(o.n));
    else y = DeviceBuffer<float>(static_cast<std::size_t>(o.n) * k);
  } catch (const gradnoise::cuda::OutOfMemory&) {
    return {{"status", "oom"}, {"note", "the data itself does not fit in device memory"}};
  }
  fill_inputs<<<blocks_for(o.n * d, 256), 256>>>(x.data(), o.n, d, o.seed);
  fill_targets<<<blocks_for(o.n * k, 256), 256>>>(y.data(), labels.data(), o.n, k, o.seed);
  GN_CUDA_CHECK(cudaGetLastError());
  GN_CUDA_CHECK(cudaDeviceSynchronize());
  gradnoise::cuda::CublasHandle handle(nullptr);
  const auto once = [&] {
    return two_pass(handle.get(), x.data(), y.data(), labels.data(), weight, bias, o.n, d, k, o.chunk_rows);
  };

  std::size_t free_before = 0, total = 0;
  GN_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
  std::atomic<std::size_t> min_free{free_before};
  std::atomic<bool> sampling{true};
  std::thread sampler([&] {
    while (sampling.load()) {
      std::size_t f = 0, t = 0;
      if (cudaMemGetInfo(&f, &t) == cudaSuccess && f < min_free.load()) min_free.store(f);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  });
  Result first;
  try {
    first = once();
  } catch (const gradnoise::cuda::OutOfMemory& e) {
    sampling.store(false);
    sampler.join();
    return {{"status", "oom"}, {"note", e.what()}};
  }
  sampling.store(false);
  sampler.join();

  json stats = {{"loss", first.loss},
                {"grad_norm_sq", first.grad_norm_sq},
                {"trace_cov", first.trace_cov},
                {"mean_sample_grad_norm_sq", first.mean_sample_grad_norm_sq}};
  stats["layers"] = json::array({{{"grad_norm_sq", first.grad_norm_sq},
                                  {"trace_cov", first.trace_cov},
                                  {"mean_sample_grad_norm_sq", first.mean_sample_grad_norm_sq}}});
  json out = {{"status", "ok"}, {"stats", stats}, {"device_name", prop.name}};
  out["peak_mem_bytes"] = static_cast<std::int64_t>(free_before - std::min(free_before, min_free.load()));
  out["peak_mem_note"] = "device memory beyond the resident data, sampled with cudaMemGetInfo";

  for (int r = 0; r < o.warmup; ++r) once();
  DeviceBuffer<char> flush(std::size_t{256} << 20);  // larger than any L2
  cudaEvent_t start, stop;
  GN_CUDA_CHECK(cudaEventCreate(&start));
  GN_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> seconds;
  for (int r = 0; r < o.reps; ++r) {
    if (o.flush) GN_CUDA_CHECK(cudaMemset(flush.data(), (r + 1) & 0xff, flush.size()));
    GN_CUDA_CHECK(cudaEventRecord(start));
    once();
    GN_CUDA_CHECK(cudaEventRecord(stop));
    GN_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    GN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    seconds.push_back(ms * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(seconds.begin(), seconds.end());
  const std::size_t mid = seconds.size() / 2;
  out["median_s"] = seconds.size() % 2 ? seconds[mid] : 0.5 * (seconds[mid - 1] + seconds[mid]);
  out["min_s"] = seconds.front();
  out["reps"] = o.reps;
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_options(argc, argv);
  try {
    json out = run(o);
    out["method"] = "two_pass_cublas";
    std::printf("%s\n", out.dump().c_str());
  } catch (const gradnoise::InputError& e) {
    std::fprintf(stderr, "bench_two_pass_cublas: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_two_pass_cublas: %s\n", e.what());
    return 1;
  }
  return 0;
}
