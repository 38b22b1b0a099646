// CPU benchmark: the float64 engine on Fashion-MNIST train (60000×784, K=10)
// for the linear and the two-layer (H=256) model under squared and
// cross-entropy loss, beside the brute-force path (materialised per-sample
// gradients) on a 2000-sample subset, extrapolated per sample.
//
// Besides the Google Benchmark flags, two modes run instead of the benchmarks
// (scripts/bench-cpu uses them to hand the same model to NumPy and to validate
// before it times):
//   --dump-weights DIR   writes DIR/<model>/W1.npy, b1.npy, ... (float64)
//   --print-stats        one JSON line of statistics per case, full precision
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "brute_force.hpp"
#include "gradnoise/data.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"

namespace {

using gradnoise::Dataset;
using gradnoise::Loss;
using gradnoise::Model;

constexpr std::int64_t kInputDim = 784;
constexpr std::int64_t kNumClasses = 10;
constexpr std::int64_t kHidden = 256;
// Brute force stores N×P doubles (3.3 GB for the two-layer model at 2000).
constexpr std::int64_t kBruteForceSamples = 2000;
constexpr std::uint64_t kSeed = 0;

struct ModelSpec {
  const char* name;  // also the weights' subdirectory
  std::vector<std::int64_t> widths;
};

const std::vector<ModelSpec>& model_specs() {
  static const std::vector<ModelSpec> specs = {
      {"linear", {kInputDim, kNumClasses}},
      {"twolayer", {kInputDim, kHidden, kNumClasses}},
  };
  return specs;
}

Model bench_model(const ModelSpec& spec) {
  return gradnoise::make_model(spec.widths, /*bias=*/true, gradnoise::Init::gaussian, kSeed);
}

// The data set is loaded once per (loss, limit) and kept for the whole run;
// a load failure is remembered so every benchmark can skip with its message.
struct LoadedData {
  std::unique_ptr<Dataset> data;
  std::string error;
};

const LoadedData& fashion_mnist(Loss loss, std::int64_t limit) {
  static std::mutex mutex;
  static std::map<std::pair<int, std::int64_t>, LoadedData> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto key = std::make_pair(static_cast<int>(loss), limit);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  LoadedData loaded;
  try {
    loaded.data = std::make_unique<Dataset>(
        gradnoise::load_fashion_mnist(gradnoise::fashion_mnist_dir(), "train", loss, limit));
  } catch (const std::exception& e) {
    loaded.error = e.what();  // names the file and how to get it
  }
  return cache.emplace(key, std::move(loaded)).first->second;
}

void set_throughput_counters(benchmark::State& state, std::int64_t n) {
  const double x_bytes = static_cast<double>(n) * kInputDim * sizeof(double);
  state.counters["samples_per_s"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
  // Bytes of X read per second, in GB/s (1e9 bytes).
  state.counters["x_GB_per_s"] =
      benchmark::Counter(x_bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_profile(benchmark::State& state, const ModelSpec* spec, Loss loss) {
  const LoadedData& loaded = fashion_mnist(loss, 0);
  if (!loaded.data) {
    state.SkipWithError(loaded.error.c_str());
    return;
  }
  const Model model = bench_model(*spec);
  gradnoise::ProfileOptions options;
  options.loss = loss;
  options.device = gradnoise::Device::cpu;
  for (auto _ : state) {
    gradnoise::Profile result = gradnoise::profile_cpu(model, *loaded.data, options);
    benchmark::DoNotOptimize(result.trace_cov);
  }
  set_throughput_counters(state, loaded.data->n);
}

void BM_brute_force(benchmark::State& state, const ModelSpec* spec, Loss loss) {
  const LoadedData& loaded = fashion_mnist(loss, kBruteForceSamples);
  if (!loaded.data) {
    state.SkipWithError(loaded.error.c_str());
    return;
  }
  const Model model = bench_model(*spec);
  for (auto _ : state) {
    gradnoise::Profile result = profile_brute_force(model, *loaded.data, loss, false);
    benchmark::DoNotOptimize(result.trace_cov);
  }
  const std::int64_t n = loaded.data->n;
  set_throughput_counters(state, n);
  // Time per iteration divided by n: the brute-force cost per sample, which
  // scales linearly in N (every term is a pass over the N×P matrix).
  state.counters["s_per_sample"] = benchmark::Counter(
      static_cast<double>(n),
      benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  state.counters["n_subset"] = static_cast<double>(n);
}

double min_of(const std::vector<double>& values) {
  double best = values.empty() ? 0 : values.front();
  for (double v : values) best = v < best ? v : best;
  return best;
}

void register_benchmarks() {
  // Best of three single runs, the same statistic the NumPy script reports.
  for (const ModelSpec& spec : model_specs()) {
    for (Loss loss : {Loss::squared, Loss::cross_entropy}) {
      const std::string suffix = std::string(spec.name) + "/" + loss_name(loss);
      benchmark::RegisterBenchmark(("profile_cpu/" + suffix).c_str(), BM_profile, &spec, loss)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->Iterations(1)
          ->Repetitions(3)
          ->ComputeStatistics("min", min_of);
      benchmark::RegisterBenchmark(("brute_force/" + suffix).c_str(), BM_brute_force, &spec,
                                   loss)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime()
          ->Iterations(1)
          ->Repetitions(3)
          ->ComputeStatistics("min", min_of);
    }
  }
}

int dump_weights(const std::filesystem::path& dir) {
  for (const ModelSpec& spec : model_specs()) {
    const Model model = bench_model(spec);
    const std::filesystem::path model_dir = dir / spec.name;
    std::filesystem::create_directories(model_dir);
    for (std::int64_t l = 0; l < model.num_layers(); ++l) {
      const gradnoise::Layer& layer = model.layers[static_cast<std::size_t>(l)];
      const std::string index = std::to_string(l + 1);
      gradnoise::write_npy(model_dir / ("W" + index + ".npy"), {layer.out, layer.in},
                           layer.weight);
      if (layer.has_bias()) {
        gradnoise::write_npy(model_dir / ("b" + index + ".npy"), {layer.out}, layer.bias);
      }
    }
  }
  return 0;
}

int print_stats() {
  for (const ModelSpec& spec : model_specs()) {
    for (Loss loss : {Loss::squared, Loss::cross_entropy}) {
      const LoadedData& loaded = fashion_mnist(loss, 0);
      if (!loaded.data) {
        std::fprintf(stderr, "bench_cpu_profile: %s\n", loaded.error.c_str());
        return 1;
      }
      gradnoise::ProfileOptions options;
      options.loss = loss;
      options.device = gradnoise::Device::cpu;
      const gradnoise::Profile p = gradnoise::profile_cpu(bench_model(spec), *loaded.data, options);
      nlohmann::json line = {
          {"case", std::string(spec.name) + "/" + loss_name(loss)},
          {"n", p.n},
          {"num_params", p.num_params},
          {"loss", p.loss},
          {"loss_var", p.loss_var},
          {"grad_norm_sq", p.grad_norm_sq},
          {"trace_cov", p.trace_cov},
          {"mean_sample_grad_norm_sq", p.mean_sample_grad_norm_sq},
      };
      for (const gradnoise::LayerProfile& layer : p.layers) {
        line["layers"].push_back({{"name", layer.name},
                                  {"grad_norm_sq", layer.grad_norm_sq},
                                  {"trace_cov", layer.trace_cov}});
      }
      // nlohmann::json prints doubles with round-trip precision.
      std::printf("%s\n", line.dump().c_str());
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Our own modes are parsed before Google Benchmark sees the flags.
  try {
    for (int i = 1; i < argc; ++i) {
      if (std::strcmp(argv[i], "--dump-weights") == 0) {
        if (i + 1 >= argc) {
          std::fprintf(stderr, "bench_cpu_profile: --dump-weights needs a directory.\n");
          return 2;
        }
        return dump_weights(argv[i + 1]);
      }
      if (std::strcmp(argv[i], "--print-stats") == 0) return print_stats();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_cpu_profile: %s\n", e.what());
    return 1;
  }

  register_benchmarks();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
