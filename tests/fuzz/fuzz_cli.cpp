// libFuzzer target: the gradnoise tool's command line. The input, split on
// NUL bytes, is argv after "gradnoise"; it is parsed by the same CLI11 app as
// host/cli/main.cpp (profile, sweep and synth), help and errors are
// formatted, the shared option checks and name parsers run on what was
// parsed, and then the command itself runs in-process when its arguments are
// confined and cheap (see confine() below):
//   * every file argument is a plain name (no '/', no leading '.'), taken
//     as that name in this process's private working directory, which holds tiny fixtures
//     (X.npy, Y.npy, labels.npy, X.csv, W.npy, run.ckpt, ... below) and, for
//     --dataset fashion-mnist, a 6-image train and 4-image test split;
//   * sizes are small (models of a few hidden units, a few SGD steps, ...).
// Outputs land in that directory and are removed after each run.
// Expected: CLI11's ParseError/Success, InputError and RuntimeError; anything
// else (another exception, a crash, a sanitizer report) is a finding.
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "cli/cli.hpp"
#include "fuzz_util.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/loss.hpp"
#include "gradnoise/profile.hpp"

using namespace gradnoise;
using namespace gradnoise::cli;

namespace {

constexpr std::int64_t kFashionTrain = 6;  // samples in the fixture splits
constexpr std::int64_t kFashionTest = 4;

// ---- Fixtures ---------------------------------------------------------------

/// A version 1.0 .npy file: `descr` '<f8' or '<i8', C order.
std::string npy_bytes(const std::string& descr, const std::vector<std::int64_t>& shape,
                      const std::vector<double>& values) {
  std::string tuple;
  for (const std::int64_t dim : shape) tuple += std::to_string(dim) + ", ";
  if (shape.size() > 1) tuple.resize(tuple.size() - 2);
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (" + tuple + "), }";
  while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
  dict += '\n';
  std::string bytes = "\x93NUMPY";
  bytes += '\x01';
  bytes += '\x00';
  bytes += static_cast<char>(dict.size() & 0xff);
  bytes += static_cast<char>(dict.size() >> 8);
  bytes += dict;
  for (const double value : values) {
    std::uint64_t bits = 0;
    if (descr == "<i8") {
      bits = static_cast<std::uint64_t>(static_cast<std::int64_t>(value));
    } else {
      std::memcpy(&bits, &value, sizeof bits);
    }
    for (int byte = 0; byte < 8; ++byte) bytes += static_cast<char>((bits >> (8 * byte)) & 0xff);
  }
  return bytes;
}

/// An unsigned-byte IDX file with the given dims and bytes value(i) for i = 0, 1, ...
std::string idx_bytes(const std::vector<std::uint32_t>& dims, std::uint8_t (*value)(std::size_t)) {
  std::string bytes{'\0', '\0', '\x08', static_cast<char>(dims.size())};
  std::size_t count = 1;
  for (const std::uint32_t dim : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes += static_cast<char>((dim >> shift) & 0xff);
    count *= dim;
  }
  for (std::size_t i = 0; i < count; ++i) bytes += static_cast<char>(value(i));
  return bytes;
}

std::vector<double> ramp(std::size_t count, double scale, double offset) {
  std::vector<double> values(count);
  for (std::size_t i = 0; i < count; ++i) {
    values[i] = offset + scale * static_cast<double>((i * 7919) % 17) / 17.0;
  }
  return values;
}

/// The files in the working directory that runs may read, by name.
std::map<std::string, std::string>& fixtures() {
  static std::map<std::string, std::string> files;
  return files;
}

std::filesystem::path& work_dir() {
  static std::filesystem::path dir;
  return dir;
}

void write_fixtures() {
  for (const auto& [name, bytes] : fixtures()) fuzz::write_bytes(work_dir() / name, bytes);
}

/// Removes what the last run wrote; restores fixtures it overwrote.
void clean_work_dir(bool fixtures_touched) {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(work_dir(), error)) {
    if (fixtures().count(entry.path().filename().string()) == 0) {
      std::filesystem::remove_all(entry.path(), error);
    }
  }
  if (fixtures_touched) write_fixtures();
}

// ---- The app, as main.cpp builds it ------------------------------------------

struct App {
  CLI::App app{"gradnoise (fuzz)", "gradnoise"};
  ProfileArgs profile_args;
  SynthArgs synth_args;
  SweepArgs sweep_args;
  CLI::App* profile = nullptr;
  CLI::App* synth = nullptr;
  CLI::App* sweep = nullptr;

  App() {
    app.set_version_flag("--version", "gradnoise (fuzz)", "Print the version and exit");
    app.require_subcommand(0, 1);
    profile = add_profile_command(app, profile_args);
    synth = add_synth_command(app, synth_args);
    sweep = add_sweep_command(app, sweep_args);
  }
};

/// The run's outputs silenced; restored on scope exit.
class Silence {
 public:
  Silence() : out_(std::cout.rdbuf(null_.rdbuf())), err_(std::cerr.rdbuf(null_.rdbuf())) {}
  ~Silence() {
    std::cout.rdbuf(out_);
    std::cerr.rdbuf(err_);
  }

 private:
  std::ostringstream null_;
  std::streambuf* out_;
  std::streambuf* err_;
};

// ---- Which runs are confined and cheap --------------------------------------

/// A plain file name (or unset), which confine() resolves in the working directory.
bool plain_name(const std::string& name) {
  if (name.empty()) return true;
  if (name.size() > 64 || name[0] == '.' || name[0] == '-') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == '-';
  });
}

/// Every run of digits in `text`, as a number, is at most `limit` (so a list
/// like "4,8" or "powerlaw:2" passes and "1000000" does not).
bool small_numbers(const std::string& text, std::uint64_t limit) {
  std::uint64_t value = 0;
  std::size_t digits = 0;
  for (std::size_t i = 0; i <= text.size(); ++i) {
    if (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      if (++digits > 6) return false;
      value = value * 10 + static_cast<std::uint64_t>(text[i] - '0');
      continue;
    }
    if (digits > 0 && value > limit) return false;
    value = 0;
    digits = 0;
  }
  return true;
}

std::int64_t list_length(const std::string& spec, std::int64_t n) {
  if (spec == "all") return n;
  if (spec == "pow2") return 8;
  return static_cast<std::int64_t>(std::count(spec.begin(), spec.end(), ',')) + 1;
}

/// Confines the run to the working directory: every file argument must be a
/// plain name, and becomes that name in the working directory.
class Confined {
 public:
  bool input(std::string& name) {
    if (!plain_name(name)) return ok_ = false;
    if (!name.empty()) name = (work_dir() / name).string();
    return ok_;
  }
  bool output(std::string& name) {
    fixture_touched_ = fixture_touched_ || fixtures().count(name) > 0;
    return input(name);
  }
  bool inputs(DataModelArgs& inputs) {
    input(inputs.x_path);
    input(inputs.y_path);
    for (std::string& spec : inputs.layers) {
      const std::size_t colon = spec.rfind(':');
      std::string weight = spec.substr(0, colon);
      input(weight);
      if (colon == std::string::npos) {
        spec = weight;
      } else {
        std::string bias = spec.substr(colon + 1);
        input(bias);
        spec = weight + ":" + bias;
      }
    }
    // At most 3 hidden layers of at most 8 units.
    if (!small_numbers(inputs.hidden, 8) ||
        std::count(inputs.hidden.begin(), inputs.hidden.end(), ',') > 2) {
      ok_ = false;
    }
    return ok_;
  }
  bool require(bool condition) { return ok_ = ok_ && condition; }
  bool ok() const { return ok_; }
  bool fixture_touched() const { return fixture_touched_; }

 private:
  bool ok_ = true;
  bool fixture_touched_ = false;
};

/// Whether the parsed command may run here: confined to the working directory
/// (its file arguments rewritten there) and cheap.
bool confine(App& app, Confined& c) {
  if (app.profile->parsed()) {
    ProfileArgs& a = app.profile_args;
    c.inputs(a.inputs);
    c.require(a.chunk_rows <= 64 && a.spectrum <= 8 && small_numbers(a.estimators, 16));
    for (std::string* out : {&a.out_path, &a.curve_path, &a.param_stats_path,
                             &a.spectrum_csv_path, &a.tests_csv_path}) {
      c.output(*out);
    }
    return c.ok();
  }
  if (app.sweep->parsed()) {
    SweepArgs& a = app.sweep_args;
    const std::int64_t runs = list_length(a.batch_sizes, kFashionTrain) * list_length(a.lrs, 1) *
                              std::max<std::int64_t>(a.replicas, 1);
    c.inputs(a.inputs);
    c.require(a.steps <= 16 && a.replicas <= 2 && a.first_replica <= 1000000 && runs <= 16 &&
              runs * std::max<std::int64_t>(a.steps, 1) <= 256 && a.threads <= 2);
    c.input(a.test_x_path);
    c.input(a.test_y_path);
    for (std::string* out : {&a.out_path, &a.summary_path, &a.weights_path, &a.checkpoint_path}) {
      c.output(*out);
    }
    a.quiet = true;
    return c.ok();
  }
  if (app.synth->parsed()) {
    SynthArgs& a = app.synth_args;
    c.require(a.n <= 64 && a.d <= 64 && a.k <= 64 && small_numbers(a.spectrum, 1000));
    for (std::string* out : {&a.x_out, &a.y_out, &a.teacher_out}) c.output(*out);
    return c.ok();
  }
  return false;
}

// ---- The checks that need no files ------------------------------------------

void check_parsed(const App& app) {
  const auto run = [](const char* what, auto&& fn) { fuzz::returns_or_reports(what, fn); };
  const DataModelArgs* inputs = nullptr;
  if (app.profile->parsed()) inputs = &app.profile_args.inputs;
  if (app.sweep->parsed()) inputs = &app.sweep_args.inputs;
  if (inputs != nullptr) {
    run("check_data_model_combinations",
        [&] { check_data_model_combinations(*inputs, app.sweep->parsed()); });
    run("parse_loss", [&] { parse_loss(inputs->loss); });
    run("parse_init", [&] { parse_init(inputs->init); });
    if (!inputs->hidden.empty()) run("parse_hidden", [&] { parse_hidden(inputs->hidden); });
  }
  if (app.profile->parsed()) {
    run("parse_device", [&] { parse_device(app.profile_args.device); });
    run("parse_batch_sizes", [&] { parse_batch_sizes(app.profile_args.batch_sizes, 10); });
  }
  if (app.sweep->parsed()) {
    run("parse_device", [&] { parse_device(app.sweep_args.device); });
    run("parse_sampling", [&] { parse_sampling(app.sweep_args.sampling); });
    run("parse_batch_sizes", [&] { parse_batch_sizes(app.sweep_args.batch_sizes, 10); });
  }
}

int run_command(App& app) {
  if (app.profile->parsed()) return run_profile(app.profile_args);
  if (app.sweep->parsed()) return run_sweep(app.sweep_args);
  if (app.synth->parsed()) return run_synth(app.synth_args);
  return 2;
}

/// Parses `args` (argv after the program name). Returns false when CLI11
/// refused them or handled --help/--version.
bool parse(App& app, const std::vector<std::string>& args) {
  std::vector<const char*> argv{"gradnoise"};
  for (const std::string& arg : args) argv.push_back(arg.c_str());
  std::ostringstream out;
  std::ostringstream err;
  try {
    app.app.parse(static_cast<int>(argv.size()), argv.data());
    return true;
  } catch (const CLI::ParseError& error) {
    app.app.exit(error, out, err);  // formats --help, --version or the error
    return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // One BLAS/OpenMP thread: runs are tiny, and libFuzzer's timing is steadier.
  setenv("OMP_NUM_THREADS", "1", 0);
  setenv("OPENBLAS_NUM_THREADS", "1", 0);

  const std::filesystem::path fashion = fuzz::scratch_dir() / "fashion";
  work_dir() = fuzz::scratch_dir() / "work";
  std::filesystem::create_directories(fashion);
  std::filesystem::create_directories(work_dir());
  setenv("GRADNOISE_FASHION_MNIST_DIR", fashion.c_str(), 1);
  const auto pixel = [](std::size_t i) { return static_cast<std::uint8_t>((i * 37) % 256); };
  const auto label = [](std::size_t i) { return static_cast<std::uint8_t>((i * 3) % 10); };
  fuzz::write_bytes(fashion / "train-images-idx3-ubyte", idx_bytes({kFashionTrain, 28, 28}, pixel));
  fuzz::write_bytes(fashion / "train-labels-idx1-ubyte", idx_bytes({kFashionTrain}, label));
  fuzz::write_bytes(fashion / "t10k-images-idx3-ubyte", idx_bytes({kFashionTest, 28, 28}, pixel));
  fuzz::write_bytes(fashion / "t10k-labels-idx1-ubyte", idx_bytes({kFashionTest}, label));

  // 8 samples, 3 features: real targets (1 or 2 columns), labels 0..2, BCE
  // targets in [0, 1], a CSV copy, layers that fit (3 -> 1, 3 -> 2 -> 1).
  auto& files = fixtures();
  files["X.npy"] = npy_bytes("<f8", {8, 3}, ramp(24, 2.0, -1.0));
  files["Y.npy"] = npy_bytes("<f8", {8, 1}, ramp(8, 1.0, 0.5));
  files["Y2.npy"] = npy_bytes("<f8", {8, 2}, ramp(16, 3.0, -2.0));
  files["T.npy"] = npy_bytes("<f8", {8, 1}, {0, 1, 0.5, 1, 0, 0.25, 1, 0});
  files["labels.npy"] = npy_bytes("<i8", {8}, {0, 1, 2, 0, 1, 2, 2, 0});
  files["W.npy"] = npy_bytes("<f8", {1, 3}, {0.5, -0.25, 1.0});
  files["b.npy"] = npy_bytes("<f8", {1}, {0.1});
  files["W1.npy"] = npy_bytes("<f8", {2, 3}, ramp(6, 1.0, -0.5));
  files["W2.npy"] = npy_bytes("<f8", {1, 2}, {0.3, -0.7});
  files["Wc.npy"] = npy_bytes("<f8", {3, 3}, ramp(9, 1.0, -0.5));
  files["X.csv"] = "a,b,c\n1,2,3\n-1,0.5,2\n0,0,1\n3,1,-2\n2,2,2\n1e-3,4,5\n-2,-1,0\n0.5,0.25,1\n";
  files["Y.csv"] = "1\n0\n2\n1\n0\n2\n1\n1\n";
  files["junk.ckpt"] = std::string("\xa2\x61x\x01\x61y\x82\x01\x02", 10);
  write_fixtures();

  // A real checkpoint of a small sweep, for runs that resume from it.
  App app;
  const bool parsed = parse(app, {"sweep", "--x", "X.npy", "--y", "Y.npy", "--batch-sizes", "2,4",
                                  "--lrs", "0.1", "--replicas", "2", "--steps", "4", "--quiet",
                                  "--summary", "s.json", "--checkpoint", "run.ckpt"});
  Confined confined;
  if (!parsed || !confine(app, confined)) fuzz::finding("the fixture sweep's options do not parse");
  {
    Silence silence;
    if (run_command(app) != 0) fuzz::finding("the fixture sweep failed");
  }
  files["run.ckpt"] = [] {
    std::ifstream in(work_dir() / "run.ckpt", std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  clean_work_dir(false);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> args;
  const char* text = reinterpret_cast<const char*>(data);
  for (std::size_t start = 0; start <= size;) {
    const void* nul = std::memchr(text + start, '\0', size - start);
    const std::size_t end = nul ? static_cast<std::size_t>(static_cast<const char*>(nul) - text) : size;
    args.emplace_back(text + start, end - start);
    start = end + 1;
  }
  if (size == 0) args.clear();

  // GRADNOISE_FUZZ_VERBOSE=1: say what became of each input (for seeds).
  static const bool verbose = std::getenv("GRADNOISE_FUZZ_VERBOSE") != nullptr;
  App app;
  if (!parse(app, args)) {
    if (verbose) std::fprintf(stderr, "fuzz_cli: not parsed\n");
    return 0;
  }
  check_parsed(app);

  Confined confined;
  if (!confine(app, confined)) {
    if (verbose) std::fprintf(stderr, "fuzz_cli: not run (outside the budget)\n");
    return 0;
  }
  int status = -1;
  std::string error;
  {
    Silence silence;
    fuzz::returns_or_reports("the command", [&] {
      try {
        status = run_command(app);
      } catch (const std::runtime_error& e) {
        error = e.what();
        throw;
      }
    });
  }
  if (verbose) {
    std::fprintf(stderr, "fuzz_cli: %s\n",
                 status >= 0 ? ("exit " + std::to_string(status)).c_str() : error.c_str());
  }
  clean_work_dir(confined.fixture_touched());
  return 0;
}
