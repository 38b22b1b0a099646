// gradnoise's side of the comparison benchmark (scripts/bench-compare): one
// profile of the hash-defined synthetic data of bench/synthetic_data.hpp,
// timed in-process so process start-up and data generation are not counted.
// Prints one JSON line: the statistics (for the agreement check), the median
// and minimum time of `--reps` runs after `--warmup`, and the peak memory the
// profile used beyond the resident data.
//
//   bench_profile_once --dump-weights DIR --widths D[,H...],K [--seed S]
//       writes DIR/W1.npy, b1.npy, ... (make_model, Gaussian, biases), float64
//   bench_profile_once --weights DIR --n N [--loss mse|ce] [--seed S]
//       [--device cpu|cuda] [--reps R] [--warmup W] [--chunk-rows C] [--no-flush]
//
// --device cuda puts X and Y in device memory first (float32) and times
// profile_cuda_device; --device cpu times the float64 CPU engine. --no-flush
// times back-to-back calls (latency of small problems); otherwise caches are
// flushed before every timed run.
#include <malloc.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cuda_entry.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "synthetic_data.hpp"

#ifdef GRADNOISE_HAVE_CUDA
#include "cuda_support.hpp"
#endif

namespace {

namespace fs = std::filesystem;
using gradnoise::Loss;
using gradnoise::Model;
using gradnoise::Profile;
using nlohmann::json;

struct Options {
  fs::path weights_dir;
  fs::path dump_dir;
  std::vector<std::int64_t> widths;
  std::int64_t n = 0;
  Loss loss = Loss::squared;
  std::uint32_t seed = 0;
  std::string device = "cpu";
  int reps = 5;
  int warmup = 1;
  std::int64_t chunk_rows = 0;  // 0: the device's default
  bool flush = true;
};

[[noreturn]] void usage_error(const std::string& sentence) {
  std::fprintf(stderr, "bench_profile_once: %s\n", sentence.c_str());
  std::exit(2);
}

std::int64_t parse_int(const char* flag, const char* text) {
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0') usage_error(std::string(flag) + " expects an integer, got '" + text + "'.");
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
    if (a + 1 >= argc) usage_error(flag + " needs a value (see the comment at the top of bench/bench_profile_once.cpp).");
    const char* value = argv[++a];
    if (flag == "--weights") o.weights_dir = value;
    else if (flag == "--dump-weights") o.dump_dir = value;
    else if (flag == "--widths") {
      std::string text = value;
      for (std::size_t start = 0; start <= text.size();) {
        const std::size_t comma = std::min(text.find(',', start), text.size());
        o.widths.push_back(parse_int("--widths", text.substr(start, comma - start).c_str()));
        start = comma + 1;
      }
    } else if (flag == "--n") o.n = parse_int("--n", value);
    else if (flag == "--loss") {
      try {
        o.loss = gradnoise::parse_loss(value);
      } catch (const gradnoise::InputError& e) {
        usage_error(e.what());
      }
    } else if (flag == "--seed") o.seed = static_cast<std::uint32_t>(parse_int("--seed", value));
    else if (flag == "--device") {
      o.device = value;
      if (o.device != "cpu" && o.device != "cuda") usage_error("--device expects cpu or cuda, got '" + o.device + "'.");
    } else if (flag == "--reps") o.reps = static_cast<int>(parse_int("--reps", value));
    else if (flag == "--warmup") o.warmup = static_cast<int>(parse_int("--warmup", value));
    else if (flag == "--chunk-rows") o.chunk_rows = parse_int("--chunk-rows", value);
    else usage_error("unknown flag '" + flag + "'.");
  }
  if (o.reps < 1 || o.warmup < 0) usage_error("--reps must be at least 1 and --warmup at least 0.");
  return o;
}

/// dir/<stem><layer>.npy, e.g. W1.npy.
fs::path layer_file(const fs::path& dir, const char* stem, int layer) {
  std::string name = stem;
  name += std::to_string(layer);
  name += ".npy";
  return dir / name;
}

int dump_weights(const Options& o) {
  if (o.widths.size() < 2 || std::any_of(o.widths.begin(), o.widths.end(), [](auto w) { return w < 1; })) {
    usage_error("--widths expects at least two positive widths, D,...,K.");
  }
  const Model model = gradnoise::make_model(o.widths, /*bias=*/true, gradnoise::Init::gaussian, o.seed);
  fs::create_directories(o.dump_dir);
  for (std::size_t l = 0; l < model.layers.size(); ++l) {
    const auto& layer = model.layers[l];
    const int index = static_cast<int>(l) + 1;
    gradnoise::write_npy(layer_file(o.dump_dir, "W", index), {layer.out, layer.in}, layer.weight);
    gradnoise::write_npy(layer_file(o.dump_dir, "b", index), {layer.out}, layer.bias);
  }
  return 0;
}

Model read_weights(const fs::path& dir) {
  Model model;
  for (int l = 1; fs::exists(layer_file(dir, "W", l)); ++l) {
    const gradnoise::Array w = gradnoise::read_npy(layer_file(dir, "W", l));
    gradnoise::Layer layer;
    layer.out = w.rows();
    layer.in = w.cols();
    layer.weight = w.values;
    if (fs::exists(layer_file(dir, "b", l))) layer.bias = gradnoise::read_npy(layer_file(dir, "b", l)).values;
    model.layers.push_back(std::move(layer));
  }
  if (model.layers.empty()) usage_error("--weights " + dir.string() + " holds no W1.npy.");
  model.validate();
  return model;
}

json statistics(const Profile& p) {
  json layers = json::array();
  for (const auto& layer : p.layers) {
    layers.push_back({{"grad_norm_sq", layer.grad_norm_sq},
                      {"trace_cov", layer.trace_cov},
                      {"mean_sample_grad_norm_sq", layer.mean_sample_grad_norm_sq}});
  }
  return {{"loss", p.loss},
          {"grad_norm_sq", p.grad_norm_sq},
          {"trace_cov", p.trace_cov},
          {"mean_sample_grad_norm_sq", p.mean_sample_grad_norm_sq},
          {"layers", layers}};
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const std::size_t mid = values.size() / 2;
  return values.size() % 2 ? values[mid] : 0.5 * (values[mid - 1] + values[mid]);
}

/// A field of /proc/self/status in bytes (VmRSS, VmHWM); -1 when unreadable.
std::int64_t status_bytes(const char* field) {
  std::FILE* status = std::fopen("/proc/self/status", "r");
  if (status == nullptr) return -1;
  char line[256];
  std::int64_t kib = -1;
  const std::size_t length = std::strlen(field);
  while (std::fgets(line, sizeof line, status) != nullptr) {
    if (std::strncmp(line, field, length) == 0 && line[length] == ':') kib = std::atoll(line + length + 1);
  }
  std::fclose(status);
  return kib < 0 ? -1 : kib * 1024;
}

/// Resets the kernel's RSS high-water mark (Linux ≥ 4.0) and returns the
/// current RSS, so VmHWM − this after a run is what the run itself added.
std::int64_t reset_peak_rss() {
  malloc_trim(0);  // freed memory kept in the heap would hide the run's own use
  std::FILE* clear = std::fopen("/proc/self/clear_refs", "w");
  if (clear == nullptr) return -1;
  const bool ok = std::fputs("5", clear) >= 0;
  std::fclose(clear);
  return ok ? status_bytes("VmRSS") : -1;
}

/// Runs `profile_once` warmup + reps times (`flush` before each timed run) and
/// fills the timing fields of `out`.
template <typename Profile1, typename Flush, typename Clock>
void time_runs(const Options& o, Profile1&& profile_once, Flush&& flush, Clock&& timed, json& out) {
  for (int w = 0; w < o.warmup; ++w) profile_once();
  std::vector<double> seconds;
  for (int r = 0; r < o.reps; ++r) {
    if (o.flush) flush();
    seconds.push_back(timed(profile_once));
  }
  out["median_s"] = median(seconds);
  out["min_s"] = *std::min_element(seconds.begin(), seconds.end());
  out["reps"] = o.reps;
}

json run_cpu(const Options& o, const Model& model) {
  gradnoise::Dataset data;
  data.n = o.n;
  data.d = model.input_dim();
  data.k = model.output_dim();
  data.x.resize(static_cast<std::size_t>(data.n * data.d));
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < data.n; ++i) {
    for (std::int64_t j = 0; j < data.d; ++j) {
      data.x[i * data.d + j] = gradnoise::bench::input_value(i, j, data.d, o.seed);
    }
  }
  if (o.loss == Loss::squared) {
    data.y.resize(static_cast<std::size_t>(data.n * data.k));
    for (std::int64_t i = 0; i < data.n; ++i)
      for (std::int64_t c = 0; c < data.k; ++c) data.y[i * data.k + c] = gradnoise::bench::target_value(i, c, data.k, o.seed);
  } else {
    data.labels.resize(static_cast<std::size_t>(data.n));
    for (std::int64_t i = 0; i < data.n; ++i) data.labels[i] = gradnoise::bench::label_value(i, data.k, o.seed);
  }
  gradnoise::ProfileOptions options;
  options.loss = o.loss;
  options.device = gradnoise::Device::cpu;
  if (o.chunk_rows > 0) options.chunk_rows = o.chunk_rows;

  // The first run gives the statistics and the peak memory beyond the data.
  const std::int64_t rss_before = reset_peak_rss();
  const Profile first = gradnoise::profile_cpu(model, data, options);
  json out = {{"status", "ok"}, {"stats", statistics(first)}, {"device_name", "cpu"}};
  const std::int64_t rss_peak = status_bytes("VmHWM");
  if (rss_before >= 0 && rss_peak >= 0) {
    out["peak_mem_bytes"] = rss_peak - rss_before;
    out["peak_mem_note"] = "peak RSS beyond the resident data (VmHWM after clear_refs)";
  } else {
    out["peak_mem_bytes"] = nullptr;
    out["peak_mem_note"] = "not measured (no /proc/self/clear_refs)";
  }

  std::vector<char> flush_buffer(std::size_t{64} << 20);  // larger than L2 and L3
  unsigned char flush_value = 0;
  time_runs(
      o, [&] { gradnoise::profile_cpu(model, data, options); },
      [&] {
        std::memset(flush_buffer.data(), ++flush_value, flush_buffer.size());
        asm volatile("" : : "r"(flush_buffer.data()) : "memory");
      },
      [](auto& run) {
        const auto start = std::chrono::steady_clock::now();
        run();
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      },
      out);
  return out;
}

#ifdef GRADNOISE_HAVE_CUDA
using gradnoise::cuda::DeviceBuffer;

/// Fills device memory with `count` values of `value(global_index)`, made on
/// the host in slices (the host never holds more than one slice).
template <typename T, typename F>
void fill_device(T* device, std::int64_t count, F&& value) {
  const std::int64_t slice = std::int64_t{1} << 24;
  std::vector<T> host(static_cast<std::size_t>(std::min(count, slice)));
  for (std::int64_t first = 0; first < count; first += slice) {
    const std::int64_t m = std::min(slice, count - first);
#pragma omp parallel for schedule(static)
    for (std::int64_t j = 0; j < m; ++j) host[j] = value(first + j);
    GN_CUDA_CHECK(cudaMemcpy(device + first, host.data(), m * sizeof(T), cudaMemcpyHostToDevice));
  }
}

json run_cuda(const Options& o, const Model& model) {
  if (gradnoise::cuda_device_count() == 0) {
    return {{"status", "error"}, {"note", "no CUDA device present"}};
  }
  const std::int64_t n = o.n, d = model.input_dim(), k = model.output_dim();
  std::size_t free_bytes = 0, total_bytes = 0;
  GN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  DeviceBuffer<float> x, y;
  DeviceBuffer<std::int32_t> labels;
  try {
    x = DeviceBuffer<float>(static_cast<std::size_t>(n * d));
    if (o.loss == Loss::squared) y = DeviceBuffer<float>(static_cast<std::size_t>(n * k));
    else labels = DeviceBuffer<std::int32_t>(static_cast<std::size_t>(n));
  } catch (const gradnoise::cuda::OutOfMemory&) {
    return {{"status", "oom"}, {"note", "the data itself does not fit in device memory"}};
  }
  fill_device(x.data(), n * d, [&](std::int64_t j) { return gradnoise::bench::input_value(j / d, j % d, d, o.seed); });
  if (o.loss == Loss::squared) {
    fill_device(y.data(), n * k, [&](std::int64_t j) { return gradnoise::bench::target_value(j / k, j % k, k, o.seed); });
  } else {
    fill_device(labels.data(), n, [&](std::int64_t i) { return gradnoise::bench::label_value(i, k, o.seed); });
  }
  const gradnoise::DeviceData data{n, d, k, x.data(), o.loss == Loss::squared ? y.data() : nullptr,
                                   o.loss == Loss::squared ? nullptr : labels.data()};
  gradnoise::ProfileOptions options;
  options.loss = o.loss;
  options.device = gradnoise::Device::cuda;
  options.chunk_rows = o.chunk_rows > 0 ? o.chunk_rows : std::int64_t{1} << 16;

  // Peak device memory of one profile beyond the resident data: a thread
  // samples cudaMemGetInfo while it runs (the backend allocates with
  // cudaMalloc, so its buffers show there for the whole call).
  GN_CUDA_CHECK(cudaDeviceSynchronize());
  GN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const std::size_t free_before = free_bytes;
  std::atomic<std::size_t> min_free{free_before};
  std::atomic<bool> sampling{true};
  std::thread sampler([&] {
    while (sampling.load()) {
      std::size_t f = 0, t = 0;
      if (cudaMemGetInfo(&f, &t) == cudaSuccess && f < min_free.load()) min_free.store(f);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  });
  Profile first;
  try {
    first = gradnoise::profile_cuda_device(model, data, options);
  } catch (const gradnoise::RuntimeError& e) {
    sampling.store(false);
    sampler.join();
    if (std::strstr(e.what(), "out of memory") == nullptr) throw;
    return {{"status", "oom"}, {"note", e.what()}};
  }
  sampling.store(false);
  sampler.join();
  json out = {{"status", "ok"}, {"stats", statistics(first)}, {"device_name", gradnoise::cuda_device_name()}};
  out["peak_mem_bytes"] = static_cast<std::int64_t>(free_before - std::min(free_before, min_free.load()));
  out["peak_mem_note"] = "device memory beyond the resident data, sampled with cudaMemGetInfo";
  out["data_bytes"] = static_cast<std::int64_t>((x.size() + y.size() + labels.size()) * 4);

  DeviceBuffer<char> flush_buffer(std::size_t{256} << 20);  // larger than any L2
  cudaEvent_t start, stop;
  GN_CUDA_CHECK(cudaEventCreate(&start));
  GN_CUDA_CHECK(cudaEventCreate(&stop));
  int flush_value = 0;
  time_runs(
      o, [&] { gradnoise::profile_cuda_device(model, data, options); },
      [&] { GN_CUDA_CHECK(cudaMemset(flush_buffer.data(), ++flush_value & 0xff, flush_buffer.size())); },
      [&](auto& run) {
        GN_CUDA_CHECK(cudaEventRecord(start));
        run();
        GN_CUDA_CHECK(cudaEventRecord(stop));
        GN_CUDA_CHECK(cudaEventSynchronize(stop));
        float ms = 0;
        GN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
        return static_cast<double>(ms) * 1e-3;
      },
      out);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return out;
}
#else
json run_cuda(const Options&, const Model&) {
  return {{"status", "error"}, {"note", "this build has no CUDA backend"}};
}
#endif

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse_options(argc, argv);
  try {
    if (!o.dump_dir.empty()) return dump_weights(o);
    if (o.weights_dir.empty()) usage_error("give --weights DIR (or --dump-weights DIR --widths D,...,K).");
    if (o.n < 2) usage_error("--n must be at least 2.");
    const Model model = read_weights(o.weights_dir);
    if (o.loss == Loss::cross_entropy && model.output_dim() < 2) {
      usage_error("--loss ce needs at least two classes (K ≥ 2).");
    }
    json out = o.device == "cuda" ? run_cuda(o, model) : run_cpu(o, model);
    out["method"] = "gradnoise";
    std::printf("%s\n", out.dump().c_str());
  } catch (const gradnoise::InputError& e) {
    std::fprintf(stderr, "bench_profile_once: %s\n", e.what());
    return 2;
  } catch (const std::bad_alloc&) {
    std::printf("%s\n", json{{"method", "gradnoise"}, {"status", "oom"}, {"note", "host out of memory"}}.dump().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_profile_once: %s\n", e.what());
    return 1;
  }
  return 0;
}
