// The command-line tool: a thin layer over the library (include/gradnoise).
// Each subcommand registers its options on a CLI11 App and runs on the
// parsed values; errors travel as gradnoise::InputError (exit 2) or
// gradnoise::RuntimeError (exit 1) and main() prints them as one line.
#pragma once

#include <cstdint>
#include <charconv>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli/inputs.hpp"
#include "gradnoise/error.hpp"

namespace gradnoise::cli {

/// What the tool is doing now, for "out of memory while <stage>".
/// What the current thread was doing, for the one sentence of an unexpected
/// failure (per thread: --devices runs ranks as threads). Functions, not an
/// extern thread_local variable, which UBSan's null check trips over in GCC.
void set_current_stage(const char* stage);
const char* current_stage();

/// `message` unchanged when it names `flag` or `value`, else prefixed with
/// "flag value: ", so every message points at the option or file at fault.
std::string mention(const std::string& flag, const std::string& value, const std::string& message);

/// Runs `fn`, passing its InputError/RuntimeError on through mention().
template <class Fn>
auto mentioning(const std::string& flag, const std::string& value, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const InputError& error) {
    throw InputError(mention(flag, value, error.what()));
  } catch (const RuntimeError& error) {
    throw RuntimeError(mention(flag, value, error.what()));
  }
}

/// Accepts only digits that fit in 64 bits, so "--seed -1" is an error rather
/// than a huge seed (CLI11 2.1's unsigned conversion wraps negative numbers)
/// and a seed beyond 2⁶⁴ − 1 is an error rather than clamped.
inline CLI::Validator non_negative_integer() {
  return CLI::Validator(
      [](std::string& input) -> std::string {
        if (input.empty() || input.find_first_not_of("0123456789") != std::string::npos) {
          return "expected a non-negative integer, not '" + input + "'";
        }
        std::uint64_t value = 0;
        const auto [end, ec] = std::from_chars(input.data(), input.data() + input.size(), value);
        if (ec != std::errc() || end != input.data() + input.size()) {
          return "expected an integer below 2^64 (18446744073709551616), not '" + input + "'";
        }
        return {};
      },
      "", "non-negative integer");
}

/// Every output of one run, held in memory until all of it is ready; then
/// written so that nothing at an output path is replaced by something else and
/// a failed run leaves none of its files behind (docs/OUTPUTS.md): regular
/// files are staged beside their targets (symlinks followed) and renamed into
/// place; character devices, FIFOs and "-" (stdout) are written directly.
class OutputSet {
 public:
  /// `flag` names the option in messages (e.g. "--out"); "-" is stdout.
  void add_text(std::string flag, std::filesystem::path path);
  /// A binary .npy output; "-" is refused.
  void add_npy(std::string flag, std::filesystem::path path);
  /// A file the command writes itself as it runs (the sweep's checkpoint):
  /// checked with the outputs, never committed.
  void add_external(std::string flag, std::filesystem::path path);
  /// Files the command reads; no output may be one of them.
  void add_inputs(const std::vector<InputFile>& files);

  /// Throws InputError when an output is an input or two outputs are one
  /// file (same device and inode, through symlinks and hard links), and
  /// unless every output can be written; call before any long computation.
  void check_writable_all() const;

  /// Whether an output goes to stdout, so the summary must go elsewhere.
  bool writes_stdout() const;

  void set_text(const std::filesystem::path& path, std::string contents);
  void set_npy(const std::filesystem::path& path, std::vector<std::int64_t> shape,
               std::vector<double> values);

  /// Writes everything, or nothing: on any failure every file this call
  /// created is removed and RuntimeError names the output that failed.
  void commit();

 private:
  struct Output {
    std::string flag;
    std::filesystem::path path;
    bool is_npy = false;
    bool external = false;
    bool ready = false;
    std::string text;
    std::vector<std::int64_t> shape;
    std::vector<double> values;
  };
  void add(std::string flag, std::filesystem::path path, bool is_npy, bool external);
  Output& find(const std::filesystem::path& path);
  std::vector<Output> outputs_;
  std::vector<InputFile> inputs_;
};

/// Options of `gradnoise profile`, as parsed.
struct ProfileArgs {
  DataModelArgs inputs;  // data and model: --dataset/--x/--y, --loss, --layer/--hidden/...
  std::string device = "auto";
  std::string devices;             // --devices: thread ranks, one per GPU (or cpu); empty: none
  std::string reduction = "auto";  // over ranks: auto, host or nccl
  std::string gpu_dtype = "float32";  // the resident copy's precision on a GPU
  std::string out_path;
  std::string curve_path;
  bool curve_loss = false;
  std::string batch_sizes = "all";
  std::string param_stats_path;
  std::int64_t chunk_rows = 0;  // 0: the device's default (kCpuChunkRows / kGpuChunkRows)
  // The noise's shape.
  std::int64_t spectrum = 0;        // top eigenpairs of Σ and H; 0: none
  bool exact_trace_sq = false;      // tr(Σ²) exactly even when it is costly
  std::string hessian = "full";     // full or gn (Gauss–Newton)
  std::string spectrum_csv_path;
  double theta = 0;                 // batch-size tests at this θ; 0: none
  std::string tests_csv_path;
  std::string estimators;           // "B_SMALL,B_BIG[,PAIRS]"; empty: none
  bool quiet = false;               // no progress line on a terminal

  // Which options were given explicitly (CLI11 fills these in).
  CLI::Option* batch_sizes_option = nullptr;
  CLI::Option* device_option = nullptr;
};

/// Options of `gradnoise synth`, as parsed.
struct SynthArgs {
  std::int64_t n = 0;
  std::int64_t d = 0;
  std::int64_t k = 1;
  std::string spectrum = "identity";
  double mean = 0;
  double label_noise = 0;
  std::uint64_t seed = 0;
  std::string x_out;
  std::string y_out;
  std::string teacher_out;
};

/// Options of `gradnoise sweep`, as parsed.
struct SweepArgs {
  DataModelArgs inputs;
  std::string batch_sizes;
  std::string lrs;
  std::int64_t replicas = 1;
  std::int64_t first_replica = 0;
  std::int64_t steps = 0;
  std::string sampling = "with";
  double label_noise = 0;
  double weight_decay = 0;
  double momentum = 0;
  std::int64_t log_every = 0;  // 0: steps/20
  bool test = false;           // --eval-test: the fashion-mnist test split
  std::int64_t test_limit = 0;
  std::string test_x_path;
  std::string test_y_path;
  std::string out_path;
  std::string summary_path;
  std::string weights_path;
  std::string checkpoint_path;
  double checkpoint_every = 60;
  bool no_profile = false;
  double divergence_factor = 1e6;
  int threads = 0;
  std::string device = "cpu";  // auto, cpu or cuda: where the SGD steps run
  std::string devices;         // --devices: thread ranks, one per GPU (or cpu); empty: none
  bool quiet = false;
  CLI::Option* device_option = nullptr;  // whether --device was given
};

CLI::App* add_profile_command(CLI::App& app, ProfileArgs& args);
CLI::App* add_sweep_command(CLI::App& app, SweepArgs& args);
CLI::App* add_synth_command(CLI::App& app, SynthArgs& args);

/// Run a subcommand; the return value is the exit status.
int run_profile(const ProfileArgs& args);
int run_sweep(const SweepArgs& args);
int run_synth(const SynthArgs& args);

}  // namespace gradnoise::cli
