// The command-line tool, run as a user runs it: the gradnoise executable
// beside this test binary (or the one $GRADNOISE names) with stdout/stderr
// captured to files in a per-test temp dir. Checks that the outputs have the
// promised shape, that their numbers are what the library computes (the CLI
// is a thin layer), and that every kind of bad input fails with one line
// naming the culprit and leaves no output behind.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "gradnoise/data.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/covariance.hpp"
#include "gradnoise/cuda.hpp"
#include "gradnoise/curvature.hpp"
#include "gradnoise/profile.hpp"
#include "gradnoise/sweep.hpp"

namespace gradnoise {
namespace {

namespace fs = std::filesystem;

struct RunResult {
  int status = -1;
  std::string out;
  std::string err;
};

std::string read_text(const fs::path& path) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream file(path, std::ios::binary | std::ios::trunc);
  file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string shell_quote(const std::string& text) {
  std::string quoted = "'";
  for (char c : text) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return quoted + "'";
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) lines.push_back(line);
  return lines;
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

bool is_executable_file(const fs::path& path) {
  std::error_code error;
  return fs::is_regular_file(path, error) && ::access(path.c_str(), X_OK) == 0;
}

/// The gradnoise executable under test: the path in $GRADNOISE when set (as
/// ../shared/gpu-pack's env script sets it), else `gradnoise` in this test
/// binary's directory, so a copied build or pack runs anywhere. Empty when
/// neither is an executable file; `problem` then says why.
std::string find_cli(std::string& problem) {
  if (const char* named = std::getenv("GRADNOISE"); named != nullptr && *named != '\0') {
    if (is_executable_file(named)) return named;
    problem = std::string("GRADNOISE names ") + named + ", which is not an executable file.";
    return {};
  }
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  if (error) {
    problem = "cannot read /proc/self/exe (" + error.message() +
              ") to find gradnoise beside the test binary; set GRADNOISE to its path.";
    return {};
  }
  const fs::path beside = self.parent_path() / "gradnoise";
  if (is_executable_file(beside)) return beside.string();
  problem = "no gradnoise executable beside the test binary (" + beside.string() +
            "); build the gradnoise target or set GRADNOISE to its path.";
  return {};
}

/// |a − b| ≤ rtol·max(|a|, |b|).
::testing::AssertionResult close_relative(double a, double b, double rtol = 1e-12) {
  if (a == b) return ::testing::AssertionSuccess();
  const double scale = std::max(std::abs(a), std::abs(b));
  if (std::abs(a - b) <= rtol * scale) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << a << " vs " << b << " (relative difference "
                                       << std::abs(a - b) / scale << ")";
}

class Cli : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string problem;
    cli_ = find_cli(problem);
    if (cli_.empty()) FAIL() << problem;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() /
           ("gradnoise_cli_" + std::string(info->name()) + "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ignored;
    if (!HasFailure()) fs::remove_all(dir_, ignored);
  }

  fs::path path(const std::string& name) const { return dir_ / name; }
  std::string p(const std::string& name) const { return path(name).string(); }

  /// Runs the binary with `args` (each shell-quoted), from the temp dir,
  /// after the shell commands in `setup` (e.g. a ulimit).
  RunResult run(const std::vector<std::string>& args, const std::string& setup = "") const {
    std::string command = "cd " + shell_quote(dir_.string()) + " && " + setup +
                          shell_quote(cli_);
    for (const std::string& arg : args) command += " " + shell_quote(arg);
    const fs::path out = dir_ / ".stdout";
    const fs::path err = dir_ / ".stderr";
    command += " >" + shell_quote(out.string()) + " 2>" + shell_quote(err.string());
    const int raw = std::system(command.c_str());
    RunResult result;
    result.status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
    result.out = read_text(out);
    result.err = read_text(err);
    fs::remove(out);
    fs::remove(err);
    return result;
  }

  /// Files in the temp dir, for "nothing new was written" checks.
  std::vector<std::string> listing() const {
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir_)) names.push_back(entry.path().filename());
    std::sort(names.begin(), names.end());
    return names;
  }

  /// Runs `args` (after `setup`), which must fail with `status`, print
  /// exactly one line "gradnoise: error: ..." containing `needle`
  /// (case-insensitive) and leave the directory as it was (no output, no temp
  /// file). Returns that line.
  std::string expect_failure(const std::vector<std::string>& args, int status,
                             const std::string& needle, const std::string& setup = "") {
    const std::vector<std::string> before = listing();
    const RunResult result = run(args, setup);
    EXPECT_EQ(result.status, status) << result.err;
    const std::vector<std::string> lines = lines_of(result.err);
    EXPECT_EQ(lines.size(), 1u) << result.err;
    if (lines.size() != 1u) return {};
    EXPECT_EQ(lines[0].rfind("gradnoise: error: ", 0), 0u) << lines[0];
    EXPECT_NE(lower(lines[0]).find(lower(needle)), std::string::npos)
        << "message does not mention '" << needle << "': " << lines[0];
    EXPECT_EQ(listing(), before) << "the failed run left files behind";
    return lines[0];
  }

  /// A run refused for naming one file twice: `command` plus `extra`, with
  /// the output's flag and path and the other flag (an input's or an
  /// output's) that the message must name.
  struct SameFile {
    std::vector<std::string> extra;
    std::string output_flag, output_path, other_flag;
  };

  /// Each case must fail with exit 2 and one line naming both flags and the
  /// output's path, writing nothing; the `inputs` keep their bytes.
  void expect_same_file_refused(const std::vector<std::string>& command,
                                const std::vector<SameFile>& cases,
                                const std::vector<fs::path>& inputs) {
    std::vector<std::string> before;
    for (const fs::path& input : inputs) before.push_back(read_text(input));
    for (const SameFile& c : cases) {
      SCOPED_TRACE(c.output_flag + " " + c.output_path);
      std::vector<std::string> args = command;
      args.insert(args.end(), c.extra.begin(), c.extra.end());
      const std::string line = expect_failure(args, 2, c.output_flag);
      EXPECT_NE(line.find(c.other_flag), std::string::npos) << line;
      EXPECT_NE(line.find(c.output_path), std::string::npos) << line;
    }
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      EXPECT_EQ(read_text(inputs[i]), before[i]) << inputs[i];
    }
  }

  /// The standard output flags of a profile run, all in the temp dir.
  std::vector<std::string> output_flags() const {
    return {"--out", p("report.json"), "--curve", p("curve.csv"), "--param-stats", p("stats.npy")};
  }

  /// X (n×d) and real Y (n×k) from `gradnoise synth`, with label noise so no
  /// model fits exactly.
  void synth(std::int64_t n, std::int64_t d, std::int64_t k) const {
    const RunResult result = run({"synth", "--n", std::to_string(n), "--d", std::to_string(d),
                                  "--k", std::to_string(k), "--seed", "3", "--label-noise", "0.3",
                                  "--x-out", p("X.npy"), "--y-out", p("Y.npy")});
    ASSERT_EQ(result.status, 0) << result.err;
  }

  /// Small fixtures: X (n×d) deterministic, labels in [0, classes).
  void write_classification(std::int64_t n, std::int64_t d, std::int64_t classes) const {
    std::vector<double> x(n * d);
    for (std::int64_t i = 0; i < n * d; ++i) x[i] = std::sin(0.37 * i + 0.1) + 0.05 * (i % 7);
    std::vector<double> labels(n);
    for (std::int64_t i = 0; i < n; ++i) labels[i] = static_cast<double>((i * 5 + 1) % classes);
    write_npy(path("X.npy"), {n, d}, x);
    write_npy(path("labels.npy"), {n}, labels);
  }

  std::string cli_;
  fs::path dir_;
};

// ---- Outputs and their shape -------------------------------------------------

TEST_F(Cli, SynthWritesWhatTheLibraryGenerates) {
  const RunResult result =
      run({"synth", "--n", "50", "--d", "3", "--k", "2", "--spectrum", "powerlaw:1", "--mean",
           "0.5", "--label-noise", "0.1", "--seed", "9", "--x-out", p("X.npy"), "--y-out",
           p("Y.npy"), "--teacher-out", p("W.npy")});
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_TRUE(result.err.empty()) << result.err;
  SynthOptions options;
  options.n = 50;
  options.d = 3;
  options.k = 2;
  options.spectrum = "powerlaw:1";
  options.mean = 0.5;
  options.label_noise = 0.1;
  options.seed = 9;
  const SynthData expected = make_synthetic(options);
  const Array x = read_npy(path("X.npy"));
  const Array y = read_npy(path("Y.npy"));
  const Array w = read_npy(path("W.npy"));
  EXPECT_EQ(x.shape, (std::vector<std::int64_t>{50, 3}));
  EXPECT_EQ(y.shape, (std::vector<std::int64_t>{50, 2}));
  EXPECT_EQ(w.shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(x.values, expected.data.x);
  EXPECT_EQ(y.values, expected.data.y);
  EXPECT_EQ(w.values, expected.teacher);
}

TEST_F(Cli, ProfileWritesReportCurveAndParamStats) {
  synth(200, 5, 2);
  std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--hidden",
                                   "4", "--batch-sizes", "pow2"};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  const RunResult result = run(args);
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_TRUE(result.err.empty()) << result.err;
  EXPECT_NE(result.out.find("trace_cov"), std::string::npos) << result.out;
  EXPECT_NE(result.out.find("B_simple"), std::string::npos) << result.out;

  const nlohmann::json report = nlohmann::json::parse(read_text(path("report.json")));
  for (const char* key : {"n", "num_params", "loss", "loss_var", "grad_norm_sq", "trace_cov",
                          "mean_sample_grad_norm_sq", "noise_scale_simple", "layers", "device",
                          "elapsed_s", "gradnoise_version", "loss_kind", "model", "data",
                          "curve_preview"}) {
    EXPECT_TRUE(report.contains(key)) << key;
  }
  const std::int64_t num_params = 5 * 4 + 4 + 4 * 2 + 2;
  EXPECT_EQ(report["n"], 200);
  EXPECT_EQ(report["num_params"], num_params);
  EXPECT_EQ(report["loss_kind"], "mse");
  EXPECT_EQ(report["model"]["widths"], nlohmann::json({5, 4, 2}));
  EXPECT_EQ(report["model"]["bias"], nlohmann::json({true, true}));
  ASSERT_EQ(report["layers"].size(), 2u);
  for (const auto& layer : report["layers"]) {
    for (const char* key : {"name", "num_params", "grad_norm_sq", "trace_cov",
                            "mean_sample_grad_norm_sq", "noise_scale_simple"}) {
      EXPECT_TRUE(layer.contains(key)) << key;
    }
  }
  EXPECT_EQ(report["layers"][0]["name"], "layer1");
  EXPECT_EQ(report["curve_preview"].size(), 9u);  // 1, 2, 4, ..., 128, 200

  const std::vector<std::string> curve = lines_of(read_text(path("curve.csv")));
  ASSERT_EQ(curve.size(), 1u + 9u);
  EXPECT_EQ(curve[0], "batch_size,var_without_replacement,var_with_replacement");
  EXPECT_EQ(curve[1].rfind("1,", 0), 0u);
  EXPECT_EQ(curve[9].rfind("200,0,", 0), 0u) << curve[9];  // c(N) = 0 exactly

  const Array stats = read_npy(path("stats.npy"));
  EXPECT_EQ(stats.shape, (std::vector<std::int64_t>{num_params, 2}));
}

TEST_F(Cli, CurveRowsFollowBatchSizes) {
  synth(20, 3, 1);
  const std::vector<std::string> base = {"profile", "--x", p("X.npy"), "--y", p("Y.npy"),
                                         "--curve", p("curve.csv")};

  ASSERT_EQ(run(base).status, 0);  // default: all
  std::vector<std::string> all = lines_of(read_text(path("curve.csv")));
  ASSERT_EQ(all.size(), 1u + 20u);
  for (int b = 1; b <= 20; ++b) EXPECT_EQ(all[b].substr(0, all[b].find(',')), std::to_string(b));

  std::vector<std::string> list = base;
  list.insert(list.end(), {"--batch-sizes", "1,7,20", "--curve-loss"});
  const RunResult result = run(list);
  ASSERT_EQ(result.status, 0) << result.err;
  std::vector<std::string> rows = lines_of(read_text(path("curve.csv")));
  ASSERT_EQ(rows.size(), 4u);
  EXPECT_EQ(rows[0],
            "batch_size,var_without_replacement,var_with_replacement,"
            "loss_var_without_replacement,loss_var_with_replacement");
  EXPECT_EQ(rows[2].rfind("7,", 0), 0u);
  EXPECT_EQ(std::count(rows[2].begin(), rows[2].end(), ','), 4);

  std::vector<std::string> pow2 = base;
  pow2.insert(pow2.end(), {"--batch-sizes", "pow2"});
  ASSERT_EQ(run(pow2).status, 0);
  rows = lines_of(read_text(path("curve.csv")));
  ASSERT_EQ(rows.size(), 1u + 6u);  // 1, 2, 4, 8, 16, 20
  EXPECT_EQ(rows.back().rfind("20,", 0), 0u);
}

// ---- The CLI computes what the library computes ------------------------------

void expect_report_matches(const nlohmann::json& report, const Profile& expected) {
  EXPECT_EQ(report["n"], expected.n);
  EXPECT_EQ(report["num_params"], expected.num_params);
  EXPECT_TRUE(close_relative(report["loss"], expected.loss));
  EXPECT_TRUE(close_relative(report["loss_var"], expected.loss_var));
  EXPECT_TRUE(close_relative(report["grad_norm_sq"], expected.grad_norm_sq));
  EXPECT_TRUE(close_relative(report["trace_cov"], expected.trace_cov));
  EXPECT_TRUE(close_relative(report["mean_sample_grad_norm_sq"], expected.mean_sample_grad_norm_sq));
  EXPECT_TRUE(close_relative(report["noise_scale_simple"], expected.noise_scale_simple));
  ASSERT_EQ(report["layers"].size(), expected.layers.size());
  for (std::size_t l = 0; l < expected.layers.size(); ++l) {
    const auto& layer = report["layers"][l];
    EXPECT_EQ(layer["name"], expected.layers[l].name);
    EXPECT_EQ(layer["num_params"], expected.layers[l].num_params);
    EXPECT_TRUE(close_relative(layer["grad_norm_sq"], expected.layers[l].grad_norm_sq));
    EXPECT_TRUE(close_relative(layer["trace_cov"], expected.layers[l].trace_cov));
    EXPECT_TRUE(close_relative(layer["mean_sample_grad_norm_sq"],
                               expected.layers[l].mean_sample_grad_norm_sq));
    EXPECT_TRUE(close_relative(layer["noise_scale_simple"], expected.layers[l].noise_scale_simple));
  }
}

TEST_F(Cli, ReportMatchesLibraryForBuiltModel) {
  synth(150, 6, 2);
  std::vector<std::string> args = {"profile", "--x",    p("X.npy"), "--y",   p("Y.npy"),
                                   "--hidden", "5,3",   "--seed",   "11",    "--chunk-rows",
                                   "16",       "--curve-loss", "--device", "cpu"};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  const RunResult result = run(args);
  ASSERT_EQ(result.status, 0) << result.err;

  const Dataset data = load_xy(path("X.npy"), path("Y.npy"), Loss::squared);
  const std::vector<std::int64_t> widths = {6, 5, 3, 2};
  const Model model = make_model(widths, true, Init::gaussian, 11);
  ProfileOptions options;
  options.device = Device::cpu;  // the float64 reference, whatever GPU the machine has
  options.param_stats = true;
  const Profile expected = profile(model, data, options);

  const nlohmann::json report = nlohmann::json::parse(read_text(path("report.json")));
  expect_report_matches(report, expected);
  EXPECT_EQ(report["model"]["seed"], 11);

  const Array stats = read_npy(path("stats.npy"));
  ASSERT_EQ(stats.shape, (std::vector<std::int64_t>{expected.num_params, 2}));
  for (std::int64_t j = 0; j < expected.num_params; ++j) {
    EXPECT_TRUE(close_relative(stats.values[2 * j], expected.param_mean[j])) << j;
    EXPECT_TRUE(close_relative(stats.values[2 * j + 1], expected.param_var[j])) << j;
  }

  // Every CSV row, at 17 significant digits, is the library's curve.
  const std::vector<std::int64_t> sizes = parse_batch_sizes("all", expected.n);
  const std::vector<CurvePoint> curve = batch_size_curve(expected, sizes);
  const std::vector<std::string> rows = lines_of(read_text(path("curve.csv")));
  ASSERT_EQ(rows.size(), curve.size() + 1);
  for (std::size_t r = 0; r < curve.size(); ++r) {
    std::istringstream row(rows[r + 1]);
    std::string cell;
    std::vector<double> cells;
    while (std::getline(row, cell, ',')) cells.push_back(std::stod(cell));
    ASSERT_EQ(cells.size(), 5u);
    EXPECT_EQ(cells[0], static_cast<double>(curve[r].batch_size));
    EXPECT_TRUE(close_relative(cells[1], curve[r].var_without_replacement, 1e-15));
    EXPECT_TRUE(close_relative(cells[2], curve[r].var_with_replacement, 1e-15));
    EXPECT_TRUE(close_relative(cells[3], curve[r].loss_var_without_replacement, 1e-15));
    EXPECT_TRUE(close_relative(cells[4], curve[r].loss_var_with_replacement, 1e-15));
  }
}

TEST_F(Cli, ReportMatchesLibraryForLayerFilesWithCrossEntropy) {
  write_classification(40, 5, 4);
  Model model;
  model.layers.resize(2);
  model.layers[0].out = 3;
  model.layers[0].in = 5;
  model.layers[1].out = 4;
  model.layers[1].in = 3;
  for (int i = 0; i < 15; ++i) model.layers[0].weight.push_back(0.3 * std::cos(1.7 * i));
  model.layers[0].bias = {0.1, -0.2, 0.05};
  for (int i = 0; i < 12; ++i) model.layers[1].weight.push_back(0.4 * std::sin(0.9 * i + 0.3));
  write_npy(path("W1.npy"), {3, 5}, model.layers[0].weight);
  write_npy(path("b1.npy"), {3}, model.layers[0].bias);
  write_npy(path("W2.npy"), {4, 3}, model.layers[1].weight);

  std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("labels.npy"),
                                   "--loss", "ce", "--layer", p("W1.npy") + ":" + p("b1.npy"),
                                   "--layer", p("W2.npy"), "--device", "cpu"};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  const RunResult result = run(args);
  ASSERT_EQ(result.status, 0) << result.err;

  const Dataset data = load_xy(path("X.npy"), path("labels.npy"), Loss::cross_entropy);
  ProfileOptions options;
  options.loss = Loss::cross_entropy;
  options.device = Device::cpu;
  options.param_stats = true;
  const Profile expected = profile(model, data, options);
  const nlohmann::json report = nlohmann::json::parse(read_text(path("report.json")));
  expect_report_matches(report, expected);
  EXPECT_EQ(report["loss_kind"], "ce");
  EXPECT_EQ(report["model"]["widths"], nlohmann::json({5, 3, 4}));
  EXPECT_EQ(report["model"]["bias"], nlohmann::json({true, false}));
  EXPECT_EQ(report["device"], "cpu");
}

// A float32 X file is kept float32 and widened chunk by chunk; a big-endian
// Fortran-order float64 one is decoded. Both must give the profile of the
// same values held as float64 (built here, not by the loader).
TEST_F(Cli, Float32AndBigEndianFortranFilesGiveTheFloat64Profile) {
  const std::int64_t n = 300, d = 4;
  std::vector<float> floats(static_cast<std::size_t>(n * d));
  for (std::size_t j = 0; j < floats.size(); ++j) floats[j] = static_cast<float>(std::sin(0.37 * j) * 2.5);
  Dataset data;
  data.n = n;
  data.d = d;
  data.k = 3;
  data.x.assign(floats.begin(), floats.end());
  std::vector<double> labels(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    data.labels.push_back(static_cast<std::int32_t>((i * 5 + 1) % 3));
    labels[static_cast<std::size_t>(i)] = data.labels.back();
  }
  write_npy(path("labels.npy"), {n}, labels);
  auto npy = [](const std::string& descr, bool fortran, const std::string& values) {
    std::string dict = "{'descr': '" + descr + "', 'fortran_order': " + (fortran ? "True" : "False") +
                       ", 'shape': (300, 4), }";
    while ((10 + dict.size() + 1) % 64 != 0) dict += ' ';
    dict += '\n';
    std::string bytes = "\x93NUMPY\x01";
    bytes += '\0';
    bytes += static_cast<char>(dict.size() & 0xff);
    bytes += static_cast<char>(dict.size() >> 8);
    return bytes + dict + values;
  };
  std::string little32, big64;
  for (const float value : floats) little32.append(reinterpret_cast<const char*>(&value), 4);
  for (std::int64_t c = 0; c < d; ++c) {  // column by column, each value's bytes reversed
    for (std::int64_t r = 0; r < n; ++r) {
      const double value = data.x[static_cast<std::size_t>(r * d + c)];
      const std::string bytes(reinterpret_cast<const char*>(&value), 8);
      big64.append(bytes.rbegin(), bytes.rend());
    }
  }
  write_bytes(path("X32.npy"), npy("<f4", false, little32));
  write_bytes(path("XBF.npy"), npy(">f8", true, big64));
  ProfileOptions options;
  options.loss = Loss::cross_entropy;
  options.device = Device::cpu;
  const std::vector<std::int64_t> widths = {d, 3};
  const Model model = make_model(widths, true, Init::gaussian, 0);
  const Profile expected = profile(model, data, options);
  for (const char* file : {"X32.npy", "XBF.npy"}) {
    SCOPED_TRACE(file);
    const RunResult result = run({"profile", "--x", p(file), "--y", p("labels.npy"), "--loss", "ce",
                                  "--device", "cpu", "--seed", "0", "--out", p("report.json")});
    ASSERT_EQ(result.status, 0) << result.err;
    expect_report_matches(nlohmann::json::parse(read_text(path("report.json"))), expected);
  }
}

TEST_F(Cli, LeastSquaresInitMatchesLibrary) {
  synth(80, 4, 1);
  const RunResult result = run({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--init",
                                "lstsq", "--device", "cpu", "--out", p("report.json")});
  ASSERT_EQ(result.status, 0) << result.err;
  const Dataset data = load_xy(path("X.npy"), path("Y.npy"), Loss::squared);
  ProfileOptions options;
  options.device = Device::cpu;
  const Profile expected = profile(fit_least_squares(data, true), data, options);
  const nlohmann::json report = nlohmann::json::parse(read_text(path("report.json")));
  EXPECT_EQ(report["model"]["init"], "lstsq");
  // At the minimum G ≈ 0, so compare G against the gradient's scale, not itself.
  EXPECT_LE(static_cast<double>(report["grad_norm_sq"]), 1e-20 * expected.mean_sample_grad_norm_sq);
  EXPECT_TRUE(close_relative(report["trace_cov"], expected.trace_cov, 1e-10));
  EXPECT_TRUE(close_relative(report["loss"], expected.loss, 1e-10));
}

TEST_F(Cli, ZeroMeanGradientWarnsAndWritesNull) {
  // Zero weights and zero targets: every per-sample gradient is zero.
  write_npy(path("X.npy"), {10, 2}, std::vector<double>(20, 1.5));
  write_npy(path("Y.npy"), {10, 1}, std::vector<double>(10, 0.0));
  const RunResult result = run({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--init",
                                "zeros", "--out", p("report.json")});
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_NE(result.err.find("gradnoise: warning:"), std::string::npos) << result.err;
  const nlohmann::json report = nlohmann::json::parse(read_text(path("report.json")));
  EXPECT_TRUE(report["noise_scale_simple"].is_null());
  EXPECT_EQ(report["grad_norm_sq"], 0.0);
}

TEST_F(Cli, VersionAndHelp) {
  RunResult result = run({"--version"});
  EXPECT_EQ(result.status, 0);
  EXPECT_EQ(result.out.rfind("gradnoise ", 0), 0u) << result.out;
  for (const char* command : {"profile", "synth"}) {
    result = run({command, "--help"});
    EXPECT_EQ(result.status, 0);
    EXPECT_NE(result.out.find("Examples:"), std::string::npos) << result.out;
  }
  // Ranks as threads of one process, and the path of their sums.
  for (const char* command : {"profile", "sweep"}) {
    result = run({command, "--help"});
    EXPECT_NE(result.out.find("--devices"), std::string::npos) << result.out;
  }
  EXPECT_NE(run({"profile", "--help"}).out.find("--reduction"), std::string::npos);
}

// ---- Bad input: non-zero exit, one line naming the culprit, no output ---------

TEST_F(Cli, MissingXFile) {
  synth(10, 2, 1);
  std::vector<std::string> args = {"profile", "--x", p("missing.npy"), "--y", p("Y.npy")};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "missing.npy");
}

TEST_F(Cli, UnknownGpuDtype) {
  synth(10, 2, 1);
  std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("Y.npy"),
                                   "--gpu-dtype", "float16"};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  const std::string line = expect_failure(args, 2, "--gpu-dtype");
  EXPECT_NE(line.find("float32 or float64"), std::string::npos) << line;
}

TEST_F(Cli, TruncatedNpy) {
  synth(10, 2, 1);
  const std::string bytes = read_text(path("X.npy"));
  write_bytes(path("X.npy"), bytes.substr(0, bytes.size() - 12));
  std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("Y.npy")};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "X.npy");
}

TEST_F(Cli, WrongMagic) {
  synth(10, 2, 1);
  write_bytes(path("bad.npy"), std::string("\x89PNG\r\n\x1a\n") + std::string(120, '\0'));
  std::vector<std::string> args = {"profile", "--x", p("bad.npy"), "--y", p("Y.npy")};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "bad.npy");
}

TEST_F(Cli, ShapeMismatchBetweenXAndY) {
  write_npy(path("X.npy"), {20, 3}, std::vector<double>(60, 1.0));
  write_npy(path("Y19.npy"), {19, 1}, std::vector<double>(19, 1.0));
  std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("Y19.npy")};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "Y19.npy");
}

TEST_F(Cli, ShapeMismatchBetweenXAndLayer) {
  synth(20, 3, 1);
  write_npy(path("W4.npy"), {1, 4}, std::vector<double>(4, 0.1));
  std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--layer",
                                   p("W4.npy")};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "W4.npy");
}

TEST_F(Cli, LabelOutOfRangeForCrossEntropy) {
  write_classification(30, 4, 10);
  std::vector<double> labels(30, 3.0);
  labels[17] = 10.0;  // one past the 10 outputs
  write_npy(path("labels10.npy"), {30}, labels);
  write_npy(path("W.npy"), {10, 4}, std::vector<double>(40, 0.01));
  std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("labels10.npy"),
                                   "--loss", "ce", "--layer", p("W.npy")};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "labels10.npy");
}

// The third loss end to end: profile (with the noise's shape) and sweep on
// multi-label targets in [0, 1] give the library's numbers; a target outside
// [0, 1] is one sentence naming the file, and no output is left.
TEST_F(Cli, BinaryCrossEntropyMatchesLibraryAndChecksTargets) {
  const std::int64_t n = 40, d = 4, k = 3;
  std::vector<double> x(n * d), y(n * k);
  for (std::int64_t j = 0; j < n * d; ++j) x[j] = std::sin(0.37 * static_cast<double>(j * j % 97));
  for (std::int64_t j = 0; j < n * k; ++j) y[j] = (j * 7 % 5) / 4.0;  // 0, ¼, ½, ¾, 1
  write_npy(path("Xb.npy"), {n, d}, x);
  write_npy(path("Yb.npy"), {n, k}, y);
  const RunResult result =
      run({"profile", "--x", p("Xb.npy"), "--y", p("Yb.npy"), "--loss", "bce", "--hidden", "2",
           "--seed", "5", "--device", "cpu", "--spectrum", "2", "--theta", "0.5", "--out",
           p("report.json")});
  ASSERT_EQ(result.status, 0) << result.err;
  const Dataset data = load_xy(path("Xb.npy"), path("Yb.npy"), Loss::binary_cross_entropy);
  const Model model = make_model(std::vector<std::int64_t>{d, 2, k}, true, Init::gaussian, 5);
  ProfileOptions options;
  options.loss = Loss::binary_cross_entropy;
  options.device = Device::cpu;
  const Profile expected = profile(model, data, options);
  const nlohmann::json report = nlohmann::json::parse(read_text(path("report.json")));
  expect_report_matches(report, expected);
  EXPECT_EQ(report["loss_kind"], "bce");

  const RunResult swept =
      run({"sweep", "--x", p("Xb.npy"), "--y", p("Yb.npy"), "--loss", "bce", "--batch-sizes",
           "4,8", "--lrs", "0.1", "--steps", "10", "--log-every", "5", "--out", p("runs.csv"),
           "--summary", p("summary.json")});
  ASSERT_EQ(swept.status, 0) << swept.err;
  EXPECT_EQ(nlohmann::json::parse(read_text(path("summary.json")))["loss"], "bce");

  y[3 * k + 1] = 1.5;
  write_npy(path("Yb_out.npy"), {n, k}, y);
  std::vector<std::string> args = {"profile", "--x", p("Xb.npy"), "--y", p("Yb_out.npy"),
                                   "--loss", "bce"};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "Yb_out.npy");
}

TEST_F(Cli, NaNInData) {
  synth(10, 2, 1);
  std::vector<double> x(20, 0.5);
  x[7] = std::numeric_limits<double>::quiet_NaN();
  write_npy(path("Xnan.npy"), {10, 2}, x);
  std::vector<std::string> args = {"profile", "--x", p("Xnan.npy"), "--y", p("Y.npy")};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "Xnan.npy");
}

// Inputs near 1e200 overflow the sums of squares: one sentence that names the
// cause, exit 2, no output file, also with the noise's shape asked for.
TEST_F(Cli, OverflowIsAnErrorWithNoOutputs) {
  std::vector<double> x(40 * 3);
  for (std::size_t j = 0; j < x.size(); ++j) x[j] = 1e200 * (1.0 + 0.01 * static_cast<double>(j % 5));
  write_npy(path("Xhuge.npy"), {40, 3}, x);
  write_npy(path("Yhuge.npy"), {40, 1}, std::vector<double>(40, 1.0));
  std::vector<std::string> args = {"profile", "--x", p("Xhuge.npy"), "--y", p("Yhuge.npy"),
                                   "--theta", "0.5", "--spectrum", "2"};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "standardise");
}

// Half-given data, a seed beyond 64 bits and a repeated batch size are usage
// errors with a sentence naming the flag (issue 14, item 10).
TEST_F(Cli, HalfGivenDataHugeSeedAndRepeatedBatchSize) {
  synth(20, 2, 1);
  expect_failure({"profile", "--x", p("X.npy"), "--out", p("report.json")}, 2, "--y");
  expect_failure({"profile", "--y", p("Y.npy"), "--out", p("report.json")}, 2, "--x");
  expect_failure({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--seed",
                  "18446744073709551616", "--out", p("report.json")},
                 2, "--seed");
  expect_failure({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--batch-sizes", "10,2,10",
                  "--curve", p("curve.csv")},
                 2, "more than once");
}

// One bad value must not ask for unbounded memory or work: a stray huge
// label, absurd --hidden widths, a sweep of huge runs, a huge pair count are
// refused up front with a sentence naming the option (issue 14, item 7).
TEST_F(Cli, UnboundedModelsAndWorkAreRefusedUpFront) {
  write_classification(8, 4, 3);
  std::vector<double> labels = {1, 2, 0, 1, 1e7, 2, 1, 0};
  write_npy(path("huge_label.npy"), {8}, labels);
  expect_failure({"profile", "--x", p("X.npy"), "--y", p("huge_label.npy"), "--loss", "ce",
                  "--out", p("report.json")},
                 2, "10000001 classes");
  synth(20, 2, 1);
  expect_failure({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--hidden", "500000,500000",
                  "--out", p("report.json")},
                 2, "--hidden 500000,500000");
  expect_failure({"sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--hidden", "2000",
                  "--batch-sizes", "1,2,4,8", "--lrs", "0.1,0.2,0.3", "--replicas", "100000000",
                  "--steps", "2", "--out", p("runs.csv")},
                 2, "--replicas");
  expect_failure({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--estimators",
                  "1,2,99999999999", "--out", p("report.json")},
                 2, "--estimators");
}

// At an exact least-squares fit every per-sample gradient is rounding error:
// B_simple is a ratio of rounding and is reported as null with a warning; a
// tiny but real label noise keeps it a number (issue 14, item 4).
TEST_F(Cli, RatiosOfRoundingErrorsAreUndefined) {
  for (const std::string noise : {"0", "1e-6"}) {
    SCOPED_TRACE("label noise " + noise);
    const RunResult made = run({"synth", "--n", "200", "--d", "5", "--seed", "4", "--label-noise",
                                noise, "--x-out", p("Xfit.npy"), "--y-out", p("Yfit.npy")});
    ASSERT_EQ(made.status, 0) << made.err;
    const RunResult result = run({"profile", "--x", p("Xfit.npy"), "--y", p("Yfit.npy"), "--init",
                                  "lstsq", "--out", p("fit.json")});
    ASSERT_EQ(result.status, 0) << result.err;
    const nlohmann::json report = nlohmann::json::parse(read_text(path("fit.json")));
    if (noise == "0") {
      EXPECT_TRUE(report["noise_scale_simple"].is_null()) << report["noise_scale_simple"];
      EXPECT_TRUE(report["layers"][0]["noise_scale_simple"].is_null());
      EXPECT_NE(result.err.find("rounding level"), std::string::npos) << result.err;
    } else {
      EXPECT_TRUE(report["noise_scale_simple"].is_number()) << result.err;
    }
  }
}

TEST_F(Cli, NaNInWeights) {
  synth(10, 2, 1);
  std::vector<double> w = {0.1, std::numeric_limits<double>::quiet_NaN()};
  write_npy(path("Wnan.npy"), {1, 2}, w);
  std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--layer",
                                   p("Wnan.npy")};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "Wnan.npy");
}

TEST_F(Cli, FewerThanTwoSamples) {
  write_npy(path("X1.npy"), {1, 3}, {1.0, 2.0, 3.0});
  write_npy(path("Y1.npy"), {1, 1}, {1.0});
  std::vector<std::string> args = {"profile", "--x", p("X1.npy"), "--y", p("Y1.npy")};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "X1.npy");
}

TEST_F(Cli, BatchSizeZeroOrAboveN) {
  synth(20, 2, 1);
  for (const char* sizes : {"0,2", "1,21"}) {
    std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("Y.npy"),
                                     "--batch-sizes", sizes};
    for (const std::string& flag : output_flags()) args.push_back(flag);
    expect_failure(args, 2, "--batch-sizes");
  }
}

TEST_F(Cli, UnwritableOutPath) {
  synth(10, 2, 1);
  const std::string out = p("no_such_dir/report.json");
  expect_failure({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--out", out, "--curve",
                  p("curve.csv")},
                 1, "report.json");
}

TEST_F(Cli, DeviceCudaWithoutBackendOrGpu) {
  synth(10, 2, 1);
  std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--device",
                                   "cuda"};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  const std::vector<std::string> before = listing();
  const RunResult result = run(args);
  if (result.status == 0) GTEST_SKIP() << "this build has a CUDA backend and a GPU to run it";
  EXPECT_NE(result.status, 0);
  const std::vector<std::string> lines = lines_of(result.err);
  ASSERT_EQ(lines.size(), 1u) << result.err;
  EXPECT_EQ(lines[0].rfind("gradnoise: error: ", 0), 0u);
  EXPECT_NE(lower(lines[0]).find("cuda"), std::string::npos) << lines[0];
  EXPECT_EQ(listing(), before);
}

TEST_F(Cli, OutOfMemoryIsOneLine) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "sanitizers reserve more address space than the limit allows";
#endif
  // 500M × 10 doubles (40 GB) under a 4 GB address-space limit, which leaves
  // room to map the shared libraries (cuBLAS alone is hundreds of MB).
  const std::vector<std::string> before = listing();
  const RunResult result = run({"synth", "--n", "500000000", "--d", "10", "--x-out", p("X.npy"),
                                "--y-out", p("Y.npy")},
                               "ulimit -v 4000000 && ");
  if (result.status == 127) GTEST_SKIP() << "the binary cannot start under the limit: " << result.err;
  EXPECT_EQ(result.status, 1) << result.err;
  const std::vector<std::string> lines = lines_of(result.err);
  ASSERT_EQ(lines.size(), 1u) << result.err;
  EXPECT_EQ(lines[0].rfind("gradnoise: error: out of memory while ", 0), 0u) << lines[0];
  EXPECT_EQ(listing(), before);
}

TEST_F(Cli, LeastSquaresWithHiddenIsAUsageError) {
  synth(10, 2, 1);
  std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--init",
                                   "lstsq", "--hidden", "3"};
  for (const std::string& flag : output_flags()) args.push_back(flag);
  expect_failure(args, 2, "--init lstsq");
}

TEST_F(Cli, UsageErrors) {
  synth(10, 2, 1);
  write_npy(path("W.npy"), {1, 2}, {0.1, 0.2});
  // --layer and a built model's options together.
  expect_failure({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--layer", p("W.npy"),
                  "--hidden", "3", "--out", p("report.json")},
                 2, "--hidden");
  // An unknown option (CLI11 parse error).
  expect_failure({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--frobnicate"}, 2,
                 "--frobnicate");
  // An unknown loss.
  expect_failure({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--loss", "hinge"}, 2,
                 "--loss");
  // Two outputs on one file.
  expect_failure({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--out", p("same"),
                  "--curve", p("same")},
                 2, "same");
  // No command.
  expect_failure({}, 2, "command");
}

// ---- The noise's shape ---------------------------------------------------------

TEST_F(Cli, ShapeOutputsMatchTheLibrary) {
  synth(300, 6, 2);
  const RunResult result =
      run({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--device", "cpu", "--spectrum", "3",
           "--theta", "0.5", "--estimators", "4,32,20", "--batch-sizes", "pow2", "--out",
           p("report.json"), "--spectrum-csv", p("spectrum.csv"), "--tests-csv", p("tests.csv")});
  ASSERT_EQ(result.status, 0) << result.err;

  const Dataset data = load_xy(path("X.npy"), path("Y.npy"), Loss::squared);
  const Model model = make_model(std::vector<std::int64_t>{6, 2}, true, Init::gaussian, 0);
  ProfileOptions options;
  options.device = Device::cpu;
  options.param_stats = true;
  const Profile prof = profile(model, data, options);
  SpectrumOptions spectrum_options;
  spectrum_options.k = 3;
  spectrum_options.keep_vectors = false;
  const CovarianceSpectrum spectrum = covariance_spectrum(model, data, Loss::squared, prof, spectrum_options);
  CurvatureOptions curvature_options;
  curvature_options.k = 3;
  const CurvatureReport curv = curvature(model, data, Loss::squared, prof, curvature_options,
                                         spectrum.trace_cov_sq_exact
                                             ? std::optional<double>(spectrum.trace_cov_sq)
                                             : std::nullopt);
  const std::vector<std::int64_t> sizes = parse_batch_sizes("pow2", prof.n);
  const BatchTests tests = batch_tests(model, data, Loss::squared, prof, 0.5, sizes);
  const EstimatorTruth truth = two_batch_estimators(model, data, Loss::squared, prof, 4, 32, 20, 0);

  const nlohmann::json report = nlohmann::json::parse(read_text(path("report.json")));
  ASSERT_EQ(report["cov_top_eigenvalues"].size(), 3u);
  for (int c = 0; c < 3; ++c) {
    EXPECT_TRUE(close_relative(report["cov_top_eigenvalues"][c], spectrum.top_eigenvalues[c], 1e-12));
    EXPECT_TRUE(close_relative(report["hessian_top_eigenvalues"][c], curv.hessian_top_eigenvalues[c], 1e-12));
  }
  // P = 14: tr(Σ²) is cheap, so it is exact, and with it the effective rank.
  ASSERT_TRUE(spectrum.trace_cov_sq_exact);
  EXPECT_TRUE(close_relative(report["trace_cov_sq"], spectrum.trace_cov_sq));
  EXPECT_TRUE(close_relative(report["effective_rank"], spectrum.effective_rank));
  // Linear model, squared loss: B_noise in closed form.
  ASSERT_TRUE(curv.noise_scale_b_noise.has_value());
  EXPECT_TRUE(close_relative(report["noise_scale_b_noise"], *curv.noise_scale_b_noise));
  EXPECT_EQ(report["min_batch_norm_test"], tests.min_batch_norm_test);
  EXPECT_EQ(report["min_batch_inner_product_test"], tests.min_batch_inner_product_test);
  EXPECT_EQ(report["min_batch_orthogonality_test"], tests.min_batch_orthogonality_test);
  EXPECT_TRUE(close_relative(report["gsnr_mean"], tests.gsnr_mean));
  EXPECT_TRUE(close_relative(report["estimators"]["trace_cov"]["mean"], truth.trace_cov.mean));
  EXPECT_TRUE(close_relative(report["estimators"]["grad_norm_sq"]["exact"], prof.grad_norm_sq));

  const std::vector<std::string> spectrum_rows = lines_of(read_text(path("spectrum.csv")));
  ASSERT_EQ(spectrum_rows.size(), 1u + 3u + 3u);  // header, model, hessian (one layer: no per-layer rows)
  EXPECT_EQ(spectrum_rows[0], "scope,rank,eigenvalue");
  EXPECT_EQ(spectrum_rows[1].rfind("model,1,", 0), 0u);
  EXPECT_EQ(spectrum_rows[4].rfind("hessian,1,", 0), 0u);
  const std::vector<std::string> test_rows = lines_of(read_text(path("tests.csv")));
  ASSERT_EQ(test_rows.size(), sizes.size() + 1);
  EXPECT_EQ(test_rows[0], "batch_size,norm_test,inner_product_test,orthogonality_test");
}

TEST_F(Cli, ShapeUsageErrors) {
  synth(40, 3, 1);
  const std::vector<std::string> data = {"profile", "--x", p("X.npy"), "--y", p("Y.npy")};
  const auto with = [&data](std::vector<std::string> extra) {
    std::vector<std::string> args = data;
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  expect_failure(with({"--spectrum-csv", p("s.csv")}), 2, "--spectrum");
  expect_failure(with({"--tests-csv", p("t.csv")}), 2, "--theta");
  expect_failure(with({"--theta", "-1"}), 2, "--theta");
  expect_failure(with({"--spectrum", "2", "--hessian", "exact"}), 2, "--hessian");
  expect_failure(with({"--estimators", "abc"}), 2, "--estimators");
  expect_failure(with({"--estimators", "32,4", "--out", p("r.json")}), 2, "--estimators");
}


// ---- gradnoise sweep ------------------------------------------------------------

TEST_F(Cli, SweepOutputsMatchTheLibrary) {
  synth(60, 3, 2);
  const RunResult result =
      run({"sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--hidden", "4", "--seed", "7",
           "--batch-sizes", "4,16", "--lrs", "0.1,0.05", "--replicas", "3", "--steps", "30",
           "--log-every", "10", "--sampling", "without", "--label-noise", "0.1", "--out",
           p("runs.csv"), "--summary", p("summary.json"), "--final-weights", p("w.npy")});
  ASSERT_EQ(result.status, 0) << result.err;

  Dataset data = load_xy(path("X.npy"), path("Y.npy"), Loss::squared);
  const std::vector<std::int64_t> widths = {3, 4, 2};
  const Model model = make_model(widths, true, Init::gaussian, 7);
  SweepConfig config;
  config.batch_sizes = {4, 16};
  config.lrs = {0.1, 0.05};
  config.replicas = 3;
  config.steps = 30;
  config.log_every = 10;
  config.sampling = Sampling::without_replacement;
  config.label_noise = 0.1;
  config.seed = 7;
  Sweep sweep(model, data, nullptr, config);
  sweep.run();
  const SweepResult want = sweep.result();
  EXPECT_EQ(read_text(path("runs.csv")), sweep_rows_csv(want));

  const nlohmann::json summary = nlohmann::json::parse(read_text(path("summary.json")));
  ASSERT_EQ(summary["grid"].size(), 4u);
  for (std::size_t g = 0; g < 4; ++g) {
    const nlohmann::json& point = summary["grid"][g];
    const GridPointSummary& expected = want.grid[g];
    EXPECT_EQ(point["batch_size"].get<std::int64_t>(), expected.batch_size);
    EXPECT_EQ(point["lr"].get<double>(), expected.lr);
    EXPECT_TRUE(close_relative(point["train_loss_mean"].get<double>(), *expected.train_loss_mean));
    EXPECT_TRUE(close_relative(point["train_loss_std"].get<double>(), *expected.train_loss_std));
    EXPECT_TRUE(close_relative(point["weight_var"].get<double>(), *expected.weight_var));
    EXPECT_EQ(point["diverged_fraction"].get<double>(), 0.0);
    EXPECT_EQ(point["trajectory"].size(), 4u);  // steps 0, 10, 20, 30
  }
  EXPECT_EQ(summary["num_runs"].get<std::int64_t>(), 12);
  const Array weights = read_npy(path("w.npy"));
  ASSERT_EQ(weights.shape, (std::vector<std::int64_t>{12, model.num_params()}));
  for (std::size_t run = 0; run < 12; ++run) {
    for (std::size_t q = 0; q < static_cast<std::size_t>(model.num_params()); ++q) {
      ASSERT_EQ(weights.values[run * static_cast<std::size_t>(model.num_params()) + q],
                want.final_weights[run][q]);
    }
  }
}

TEST_F(Cli, SweepResumesFromItsCheckpoint) {
  synth(40, 2, 1);
  const std::vector<std::string> common = {
      "sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--batch-sizes", "2,8", "--lrs", "0.05",
      "--replicas", "2", "--steps", "50", "--log-every", "5", "--checkpoint", p("ck.bin"),
      "--checkpoint-every", "0"};
  auto first = common;
  first.insert(first.end(), {"--out", p("a.csv")});
  ASSERT_EQ(run(first).status, 0);
  ASSERT_TRUE(fs::exists(path("ck.bin")));
  // A finished checkpoint resumes at the end and reproduces the outputs.
  auto second = common;
  second.insert(second.end(), {"--out", p("b.csv")});
  const RunResult resumed = run(second);
  ASSERT_EQ(resumed.status, 0) << resumed.err;
  EXPECT_NE(resumed.err.find("resuming"), std::string::npos);
  EXPECT_EQ(read_text(path("a.csv")), read_text(path("b.csv")));
  // Another sweep refuses it.
  auto other = common;
  other[8] = "0.01";
  other.insert(other.end(), {"--out", p("c.csv")});
  expect_failure(other, 2, "--checkpoint");
}

TEST_F(Cli, SweepReportsDivergenceWithoutNaNs) {
  synth(40, 3, 1);
  const RunResult result = run({"sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--batch-sizes", "4",
                                "--lrs", "0.01,50", "--replicas", "2", "--steps", "100", "--out",
                                p("runs.csv"), "--summary", p("s.json")});
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_NE(result.err.find("diverged"), std::string::npos);
  const std::string csv = read_text(path("runs.csv"));
  EXPECT_EQ(lower(csv).find("nan"), std::string::npos);
  const nlohmann::json summary = nlohmann::json::parse(read_text(path("s.json")));
  EXPECT_EQ(summary["grid"][1]["diverged_fraction"].get<double>(), 1.0);
  EXPECT_TRUE(summary["grid"][1]["train_loss_mean"].is_null());
  EXPECT_EQ(summary["divergences"].size(), 2u);
  EXPECT_EQ(summary["grid"][0]["diverged_fraction"].get<double>(), 0.0);
}

TEST_F(Cli, SweepUsageErrors) {
  synth(30, 2, 1);
  const auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"sweep", "--x", p("X.npy"), "--y", p("Y.npy"),
                                     "--steps", "5", "--out", p("runs.csv")};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  expect_failure(with({"--batch-sizes", "4", "--lrs", "0.1", "--label-noise", "0.1", "--loss", "ce"}), 2,
                 "--loss");
  expect_failure(with({"--batch-sizes", "31", "--lrs", "0.1"}), 2, "--batch-sizes");
  expect_failure(with({"--batch-sizes", "4", "--lrs", "fast"}), 2, "--lrs");
  expect_failure(with({"--batch-sizes", "4", "--lrs", "0.1", "--sampling", "sometimes"}), 2, "--sampling");
  expect_failure(with({"--batch-sizes", "4", "--lrs", "0.1", "--momentum", "1"}), 2, "--momentum");
  expect_failure(with({"--batch-sizes", "4", "--lrs", "0.1", "--eval-test"}), 2, "--eval-test");
  expect_failure(with({"--batch-sizes", "4", "--lrs", "0.1", "--test-x", p("X.npy")}), 2, "--test-y");
  expect_failure({"sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--steps", "5", "--batch-sizes", "4",
                  "--lrs", "0.1"},
                 2, "--out");
  expect_failure(with({"--batch-sizes", "4", "--lrs", "0.1", "--device", "tpu"}), 2, "--device");
}

TEST_F(Cli, SweepDeviceCudaWithoutGpuIsOneLine) {
  synth(30, 2, 1);
  const std::vector<std::string> before = listing();
  const RunResult result =
      run({"sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--batch-sizes", "4", "--lrs", "0.1",
           "--steps", "5", "--device", "cuda", "--out", p("runs.csv"), "--summary", p("s.json")});
  if (result.status == 0) GTEST_SKIP() << "this build has a CUDA backend and a GPU to run it";
  EXPECT_EQ(result.status, 1) << result.err;
  const std::vector<std::string> lines = lines_of(result.err);
  ASSERT_EQ(lines.size(), 1u) << result.err;
  EXPECT_EQ(lines[0].rfind("gradnoise: error: ", 0), 0u) << lines[0];
  EXPECT_NE(lines[0].find("--device cuda"), std::string::npos) << lines[0];
  EXPECT_EQ(listing(), before);
}

TEST_F(Cli, SweepRecordsItsDevice) {
  synth(30, 2, 1);
  const RunResult result =
      run({"sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--batch-sizes", "4", "--lrs", "0.1",
           "--steps", "5", "--device", "auto", "--summary", p("s.json")});
  ASSERT_EQ(result.status, 0) << result.err;
  const nlohmann::json summary = nlohmann::json::parse(read_text(path("s.json")));
  EXPECT_EQ(summary["config"]["device_requested"].get<std::string>(), "auto");
  const std::string device = summary["config"]["device"].get<std::string>();
  EXPECT_EQ(device, cuda_device_count() > 0 ? "cuda: " + cuda_device_name() : std::string("cpu"));
}

// ---- CSV data: --csv-header, numbers out of range, escaped file content -----------

TEST_F(Cli, CsvHeaderOptionSaysWhetherTheFirstLineIsAHeader) {
  write_bytes(path("X.csv"), "1,2\n3,4.5\n5,7\n");
  write_bytes(path("Y.csv"), "1\n2\n4\n");
  const auto samples = [&](const std::vector<std::string>& extra) -> std::int64_t {
    std::vector<std::string> args = {"profile", "--x", p("X.csv"), "--y", p("Y.csv"),
                                     "--out", p("report.json")};
    args.insert(args.end(), extra.begin(), extra.end());
    const RunResult result = run(args);
    EXPECT_EQ(result.status, 0) << result.err;
    if (result.status != 0) return -1;
    return nlohmann::json::parse(read_text(path("report.json")))["n"].get<std::int64_t>();
  };
  EXPECT_EQ(samples({}), 3);                          // auto: numbers are data
  EXPECT_EQ(samples({"--csv-header", "no"}), 3);
  EXPECT_EQ(samples({"--csv-header", "yes"}), 2);     // the first line is dropped

  write_bytes(path("Xh.csv"), "a,b\n1,2\n3,4.5\n5,7\n");
  write_bytes(path("Yh.csv"), "y\n1\n2\n4\n");
  fs::remove(path("report.json"));
  expect_failure({"profile", "--x", p("Xh.csv"), "--y", p("Yh.csv"), "--csv-header", "no",
                  "--out", p("report.json")},
                 2, "line 1, column 1 holds \"a\", which is not a number");
  expect_failure({"profile", "--x", p("Xh.csv"), "--y", p("Yh.csv"), "--csv-header", "maybe",
                  "--out", p("report.json")},
                 2, "--csv-header");
}

TEST_F(Cli, CsvHeaderOptionAppliesToSweepTestData) {
  synth(30, 2, 1);
  write_bytes(path("TX.csv"), "x0,x1\n0.5,1\n-1,2\n");
  write_bytes(path("TY.csv"), "y\n0.25\n1\n");
  const std::vector<std::string> args = {
      "sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--test-x", p("TX.csv"), "--test-y",
      p("TY.csv"), "--batch-sizes", "4", "--lrs", "0.1", "--steps", "5", "--quiet"};
  std::vector<std::string> with_header = args;
  with_header.insert(with_header.end(), {"--summary", p("s.json")});
  const RunResult result = run(with_header);
  ASSERT_EQ(result.status, 0) << result.err;
  std::vector<std::string> without = args;
  without.insert(without.end(), {"--csv-header", "no", "--summary", p("s2.json")});
  expect_failure(without, 2, "TX.csv\" line 1, column 1 holds \"x0\"");
}

TEST_F(Cli, CsvNumbersOutOfRangeAndControlBytes) {
  write_bytes(path("Y.csv"), "1\n2\n3\n");
  write_bytes(path("big.csv"), "1e999,2\n3,4\n5,6\n");
  expect_failure({"profile", "--x", p("big.csv"), "--y", p("Y.csv"), "--out", p("r.json")}, 2,
                 "big.csv\" line 1, column 1 holds \"1e999\", which is beyond float64's range");

  write_bytes(path("tiny.csv"), "1e-400,2\n3,4\n5,1e-400\n");
  const RunResult tiny = run({"profile", "--x", p("tiny.csv"), "--y", p("Y.csv"), "--out",
                              p("tiny.json")});
  ASSERT_EQ(tiny.status, 0) << tiny.err;
  EXPECT_EQ(nlohmann::json::parse(read_text(path("tiny.json")))["n"], 3);

  write_bytes(path("evil.csv"), std::string("1,2\n3,\x1b]0;pwned\x07") + '\0' + "x\n5,6\n");
  const RunResult evil = run({"profile", "--x", p("evil.csv"), "--y", p("Y.csv")});
  EXPECT_EQ(evil.status, 2) << evil.err;
  EXPECT_NE(evil.err.find("holds \"\\x1b]0;pwned\\x07\\x00x\", which is not a number"),
            std::string::npos)
      << evil.err;
  EXPECT_EQ(evil.err.find('\x1b'), std::string::npos);
  EXPECT_EQ(lines_of(evil.err).size(), 1u) << evil.err;
}

// ---- Outputs never replace what is at their path ----------------------------------

/// Reads a FIFO while a command writes it: opened (without blocking) before
/// the command runs, so the command's open does not wait for a reader, read
/// as the command writes, and drained once it has exited. A command that
/// never writes leaves it empty rather than hanging the test.
class FifoReader {
 public:
  explicit FifoReader(const fs::path& path)
      : fd_(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC)) {
    thread_ = std::thread([this] {
      char buffer[4096];
      for (;;) {
        const bool last = done_.load();
        for (ssize_t got; (got = ::read(fd_, buffer, sizeof buffer)) > 0;) {
          bytes_.append(buffer, static_cast<std::size_t>(got));
        }
        if (last) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    });
  }
  FifoReader(const FifoReader&) = delete;
  FifoReader& operator=(const FifoReader&) = delete;
  ~FifoReader() { finish(); }

  bool opened() const { return fd_ >= 0; }
  /// Everything written, once the writer has exited.
  std::string finish() {
    if (thread_.joinable()) {
      done_ = true;
      thread_.join();
      if (fd_ >= 0) ::close(fd_);
    }
    return bytes_;
  }

 private:
  int fd_;
  std::atomic<bool> done_{false};
  std::string bytes_;
  std::thread thread_;
};

TEST_F(Cli, ProfileRefusesAnOutputThatIsAnInput) {
  synth(20, 3, 1);
  write_npy(path("W.npy"), {1, 3}, {0.1, -0.2, 0.3});
  write_npy(path("b.npy"), {1}, {0.5});
  fs::create_symlink("Y.npy", path("y_link.npy"));
  fs::create_hard_link(path("X.npy"), path("x_hard.npy"));
  const std::string spelt_otherwise = (dir_ / "." / "X.npy").string();
  const std::string layer = p("W.npy") + ":" + p("b.npy");
  // Each beside a harmless output, which must not be written either.
  const std::string report = p("report.json");
  expect_same_file_refused(
      {"profile", "--x", p("X.npy"), "--y", p("Y.npy")},
      {{{"--out", p("X.npy")}, "--out", p("X.npy"), "--x"},
       {{"--out", report, "--curve", p("Y.npy")}, "--curve", p("Y.npy"), "--y"},
       {{"--out", report, "--param-stats", spelt_otherwise}, "--param-stats", spelt_otherwise, "--x"},
       {{"--out", p("y_link.npy")}, "--out", p("y_link.npy"), "--y"},
       {{"--out", report, "--curve", p("x_hard.npy")}, "--curve", p("x_hard.npy"), "--x"},
       {{"--layer", layer, "--spectrum", "1", "--out", report, "--spectrum-csv", p("W.npy")},
        "--spectrum-csv", p("W.npy"), "--layer"},
       {{"--layer", layer, "--theta", "0.5", "--out", report, "--tests-csv", p("b.npy")},
        "--tests-csv", p("b.npy"), "--layer"}},
      {path("X.npy"), path("Y.npy"), path("W.npy"), path("b.npy")});
  EXPECT_TRUE(fs::is_symlink(path("y_link.npy")));
}

TEST_F(Cli, SweepRefusesAnOutputThatIsAnInput) {
  synth(20, 3, 1);
  fs::copy_file(path("X.npy"), path("Xt.npy"));
  fs::copy_file(path("Y.npy"), path("Yt.npy"));
  write_npy(path("W.npy"), {1, 3}, {0.1, -0.2, 0.3});
  expect_same_file_refused(
      {"sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--batch-sizes", "4", "--lrs", "0.1",
       "--steps", "5"},
      {{{"--out", p("X.npy")}, "--out", p("X.npy"), "--x"},
       {{"--out", p("runs.csv"), "--summary", p("Y.npy")}, "--summary", p("Y.npy"), "--y"},
       {{"--layer", p("W.npy"), "--out", p("runs.csv"), "--final-weights", p("W.npy")},
        "--final-weights", p("W.npy"), "--layer"},
       {{"--out", p("runs.csv"), "--checkpoint", p("X.npy")}, "--checkpoint", p("X.npy"), "--x"},
       {{"--test-x", p("Xt.npy"), "--test-y", p("Yt.npy"), "--out", p("Yt.npy")},
        "--out", p("Yt.npy"), "--test-y"},
       // A checkpoint, read to resume and rewritten as the sweep goes, is no
       // place for another output.
       {{"--out", p("ck.bin"), "--checkpoint", p("ck.bin")}, "--checkpoint", p("ck.bin"), "--out"}},
      {path("X.npy"), path("Y.npy"), path("Xt.npy"), path("Yt.npy"), path("W.npy")});
}

TEST_F(Cli, DatasetFilesAreInputs) {
  // The folder's files are inputs (the folder itself is not): refused before
  // anything is loaded, so stand-in files do.
  const fs::path data = path("fashion");
  fs::create_directory(data);
  write_bytes(data / "train-images-idx3-ubyte.gz", "precious");
  const std::string output = (data / "train-images-idx3-ubyte.gz").string();
  const std::string setup = "GRADNOISE_FASHION_MNIST_DIR=" + shell_quote(data.string()) + " ";
  const std::string line = expect_failure(
      {"profile", "--dataset", "fashion-mnist", "--loss", "ce", "--out", output}, 2, "--out", setup);
  EXPECT_NE(line.find("--dataset"), std::string::npos) << line;
  EXPECT_NE(line.find(output), std::string::npos) << line;
  EXPECT_EQ(read_text(data / "train-images-idx3-ubyte.gz"), "precious");
}

TEST_F(Cli, TwoOutputsThatAreOneFileAreRefused) {
  synth(20, 3, 1);
  write_bytes(path("report.json"), "old report");
  fs::create_hard_link(path("report.json"), path("alias.json"));
  fs::create_symlink("report.json", path("link.json"));
  // A hard link, a symlink, and a file yet to be created spelt two ways.
  const std::string not_yet = (dir_ / "." / "curve.csv").string();
  expect_same_file_refused(
      {"profile", "--x", p("X.npy"), "--y", p("Y.npy")},
      {{{"--out", p("report.json"), "--curve", p("alias.json")}, "--curve", p("alias.json"), "--out"},
       {{"--out", p("link.json"), "--curve", p("report.json")}, "--curve", p("report.json"), "--out"},
       {{"--out", p("curve.csv"), "--curve", not_yet}, "--curve", not_yet, "--out"},
       {{"--out", "-", "--curve", "-"}, "--curve", "-", "--out"},
       // The tests' stdout is a file, which /proc/self/fd/1 also names (not
       // /dev/stdout: as root a regression could replace that link in /dev).
       {{"--out", "-", "--curve", "/proc/self/fd/1"}, "--curve", "/proc/self/fd/1", "--out"}},
      {path("report.json")});
  EXPECT_TRUE(fs::is_symlink(path("link.json")));

  // The same for sweep outputs.
  expect_same_file_refused(
      {"sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--batch-sizes", "4", "--lrs", "0.1",
       "--steps", "5"},
      {{{"--out", p("report.json"), "--summary", p("alias.json")}, "--summary", p("alias.json"),
        "--out"}},
      {path("report.json")});
}

TEST_F(Cli, SymlinkOutputsAreWrittenThrough) {
  synth(20, 3, 1);
  fs::create_directory(path("results"));
  write_bytes(path("results/report.json"), "old report");
  fs::create_symlink("results/report.json", path("report.json"));   // relative
  fs::create_symlink(path("results/curve.csv"), path("curve.csv"));  // absolute, dangling
  fs::create_symlink("stats_link.npy", path("stats.npy"));           // a chain, dangling
  fs::create_symlink("results/stats.npy", path("stats_link.npy"));
  const RunResult result = run({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--out",
                                p("report.json"), "--curve", p("curve.csv"), "--param-stats",
                                p("stats.npy")});
  ASSERT_EQ(result.status, 0) << result.err;

  for (const char* link : {"report.json", "curve.csv", "stats.npy", "stats_link.npy"}) {
    EXPECT_TRUE(fs::is_symlink(path(link))) << link;
  }
  EXPECT_EQ(fs::read_symlink(path("report.json")), "results/report.json");
  const nlohmann::json report = nlohmann::json::parse(read_text(path("results/report.json")));
  EXPECT_EQ(report["n"], 20);
  EXPECT_EQ(lines_of(read_text(path("results/curve.csv")))[0],
            "batch_size,var_without_replacement,var_with_replacement");
  EXPECT_EQ(read_npy(path("results/stats.npy")).shape, (std::vector<std::int64_t>{4, 2}));
  // No temp file left beside the links or the targets.
  std::vector<std::string> results;
  for (const auto& entry : fs::directory_iterator(path("results"))) {
    results.push_back(entry.path().filename());
  }
  std::sort(results.begin(), results.end());
  EXPECT_EQ(results, (std::vector<std::string>{"curve.csv", "report.json", "stats.npy"}));
  EXPECT_EQ(listing(), (std::vector<std::string>{"X.npy", "Y.npy", "curve.csv", "report.json",
                                                 "results", "stats.npy", "stats_link.npy"}));

  // The sweep's checkpoint, written as it goes, follows its link too.
  fs::create_symlink("results/ck.bin", path("ck.bin"));
  const RunResult sweep =
      run({"sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--batch-sizes", "4", "--lrs", "0.1",
           "--steps", "5", "--out", p("runs.csv"), "--checkpoint", p("ck.bin"),
           "--checkpoint-every", "0"});
  ASSERT_EQ(sweep.status, 0) << sweep.err;
  EXPECT_TRUE(fs::is_symlink(path("ck.bin")));
  EXPECT_TRUE(fs::is_regular_file(path("results/ck.bin")));
}

TEST_F(Cli, FifoOutputIsWrittenInPlace) {
  synth(20, 3, 1);
  ASSERT_EQ(::mkfifo(path("report.fifo").c_str(), 0600), 0) << std::strerror(errno);
  FifoReader reader(path("report.fifo"));
  ASSERT_TRUE(reader.opened()) << std::strerror(errno);
  const RunResult result = run({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--out",
                                p("report.fifo"), "--curve", p("curve.csv")});
  const std::string bytes = reader.finish();
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_TRUE(fs::is_fifo(path("report.fifo")));
  ASSERT_FALSE(bytes.empty());
  EXPECT_EQ(nlohmann::json::parse(bytes)["n"], 20);
  EXPECT_EQ(listing(), (std::vector<std::string>{"X.npy", "Y.npy", "curve.csv", "report.fifo"}));
}

TEST_F(Cli, DeviceOutputIsWrittenInPlace) {
  synth(20, 3, 1);
  // As root, a private /dev/null (so a regression cannot replace the
  // machine's); otherwise /dev/null itself, which a user cannot replace but
  // the old code still failed on.
  fs::path device = path("null");
  if (::mknod(device.c_str(), S_IFCHR | 0666, makedev(1, 3)) != 0) device = "/dev/null";
  const RunResult result = run({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--out",
                                device.string(), "--curve", p("curve.csv")});
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_TRUE(fs::is_character_file(device)) << device;
  EXPECT_TRUE(fs::is_character_file("/dev/null"));
  EXPECT_FALSE(read_text(path("curve.csv")).empty());
}

TEST_F(Cli, DashWritesTextOutputsToStdout) {
  synth(20, 3, 1);
  const std::vector<std::string> data = {"profile", "--x", p("X.npy"), "--y", p("Y.npy"),
                                         "--batch-sizes", "pow2"};
  std::vector<std::string> to_file = data;
  to_file.insert(to_file.end(), {"--curve", p("curve.csv")});
  ASSERT_EQ(run(to_file).status, 0);
  std::vector<std::string> to_stdout = data;
  to_stdout.insert(to_stdout.end(), {"--curve", "-", "--out", p("report.json")});
  const RunResult result = run(to_stdout);
  ASSERT_EQ(result.status, 0) << result.err;
  // stdout is the CSV alone; the summary went to stderr.
  EXPECT_EQ(result.out, read_text(path("curve.csv")));
  EXPECT_NE(result.err.find("trace_cov"), std::string::npos) << result.err;
  EXPECT_FALSE(fs::exists(path("-")));
  EXPECT_TRUE(fs::exists(path("report.json")));

  // The sweep's CSV too.
  const std::vector<std::string> sweep = {"sweep", "--x", p("X.npy"), "--y", p("Y.npy"),
                                          "--batch-sizes", "4", "--lrs", "0.1", "--steps", "5",
                                          "--out"};
  std::vector<std::string> sweep_file = sweep;
  sweep_file.push_back(p("runs.csv"));
  ASSERT_EQ(run(sweep_file).status, 0);
  std::vector<std::string> sweep_stdout = sweep;
  sweep_stdout.push_back("-");
  const RunResult swept = run(sweep_stdout);
  ASSERT_EQ(swept.status, 0) << swept.err;
  EXPECT_EQ(swept.out, read_text(path("runs.csv")));
  EXPECT_FALSE(fs::exists(path("-")));

  // A binary output does not go to stdout.
  expect_failure({"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--param-stats", "-"}, 2,
                 "--param-stats");
}

// ---- Ranks as threads of one process: --devices, --reduction ------------------------

/// `report` without the keys that hold timings or eigensolver residuals.
nlohmann::json without_timings(nlohmann::json report) {
  if (report.is_object()) {
    for (auto it = report.begin(); it != report.end();) {
      if (it.key().find("elapsed_s") != std::string::npos || it.key().find("residuals") != std::string::npos) {
        it = report.erase(it);
      } else {
        *it = without_timings(*it);
        ++it;
      }
    }
  } else if (report.is_array()) {
    for (auto& item : report) item = without_timings(item);
  }
  return report;
}

/// Every number of `got` within `rtol` of `want`'s and every other value
/// equal, but the keys that describe the run (timings, ranks, their bytes,
/// the reduction, the options) and what one side leaves null (tr(Σ²) and
/// tr(HΣ) are not computed across ranks; docs/MPI.md).
void expect_reports_match(const nlohmann::json& got, const nlohmann::json& want, const std::string& where,
                          double rtol = 1e-12) {
  if (got.is_null() || want.is_null()) return;
  if (want.is_object()) {
    ASSERT_TRUE(got.is_object()) << where;
    for (auto it = want.begin(); it != want.end(); ++it) {
      static const char* const describing[] = {"elapsed_s", "residuals", "ranks", "bytes_communicated",
                                               "reduction", "options", "curvature_notes"};
      if (std::any_of(std::begin(describing), std::end(describing),
                      [&](const char* key) { return it.key().find(key) != std::string::npos; })) {
        continue;
      }
      ASSERT_TRUE(got.contains(it.key())) << where << "/" << it.key();
      expect_reports_match(got[it.key()], it.value(), where + "/" + it.key(), rtol);
    }
  } else if (want.is_array()) {
    ASSERT_EQ(got.size(), want.size()) << where;
    for (std::size_t i = 0; i < want.size(); ++i) {
      expect_reports_match(got[i], want[i], where + "/" + std::to_string(i), rtol);
    }
  } else if (want.is_number() && !want.is_boolean()) {
    EXPECT_TRUE(close_relative(got.get<double>(), want.get<double>(), rtol)) << where;
  } else {
    EXPECT_EQ(got, want) << where;
  }
}

TEST_F(Cli, ProfileOverThreadRanksMatchesOneProcess) {
  synth(1001, 6, 2);
  const std::vector<std::string> base = {"profile", "--x", p("X.npy"), "--y", p("Y.npy"), "--hidden", "3",
                                         "--init", "gaussian", "--seed", "4", "--spectrum", "3",
                                         "--theta", "0.5", "--quiet"};
  const auto outputs = [&](const std::string& tag) {
    std::vector<std::string> args = base;
    args.insert(args.end(), {"--out", p(tag + ".json"), "--param-stats", p(tag + ".npy"), "--curve",
                             p(tag + ".csv")});
    return args;
  };
  const RunResult one = run(outputs("one"));
  ASSERT_EQ(one.status, 0) << one.err;
  const nlohmann::json want = nlohmann::json::parse(read_text(path("one.json")));
  EXPECT_EQ(want["ranks"], 1);
  EXPECT_EQ(want["reduction"], "none");
  const Array want_stats = read_npy(path("one.npy"));
  for (const std::string& devices : {std::string("cpu,cpu"), std::string("cpu,cpu,cpu")}) {
    SCOPED_TRACE(devices);
    const std::string tag = std::to_string(devices.size());
    std::vector<std::string> args = outputs(tag);
    args.insert(args.end(), {"--devices", devices});
    const RunResult ranks = run(args);
    ASSERT_EQ(ranks.status, 0) << ranks.err;
    EXPECT_NE(ranks.out.find("threads of one process"), std::string::npos) << ranks.out;
    const nlohmann::json got = nlohmann::json::parse(read_text(path(tag + ".json")));
    expect_reports_match(got, want, "report");
    EXPECT_EQ(got["ranks"], (devices.size() + 1) / 4);
    EXPECT_EQ(got["reduction"], "host");  // CPU ranks: the thread mailboxes
    EXPECT_GT(got["bytes_communicated"]["profile"].get<std::int64_t>(), 0);
    const Array stats = read_npy(path(tag + ".npy"));
    ASSERT_EQ(stats.values.size(), want_stats.values.size());
    for (std::size_t j = 0; j < stats.values.size(); ++j) {
      EXPECT_TRUE(close_relative(stats.values[j], want_stats.values[j])) << "--param-stats " << j;
    }
  }
  // A fixed rank count gives the same bits run to run.
  std::vector<std::string> again = outputs("again");
  again.insert(again.end(), {"--devices", "cpu,cpu,cpu"});
  ASSERT_EQ(run(again).status, 0);
  EXPECT_EQ(without_timings(nlohmann::json::parse(read_text(path("again.json")))),
            without_timings(nlohmann::json::parse(read_text(path("11.json")))));
  EXPECT_EQ(read_text(path("again.csv")), read_text(path("11.csv")));
}

TEST_F(Cli, SweepOverThreadRanksMatchesOneProcess) {
  synth(50, 3, 1);
  const std::vector<std::string> base = {"sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--init", "zeros",
                                         "--batch-sizes", "1,4,16", "--lrs", "0.05,0.01", "--replicas", "3",
                                         "--steps", "40", "--log-every", "10", "--quiet"};
  std::vector<std::string> one = base, ranks = base;
  one.insert(one.end(), {"--out", p("one.csv"), "--final-weights", p("one.npy")});
  ranks.insert(ranks.end(), {"--out", p("ranks.csv"), "--final-weights", p("ranks.npy"), "--devices", "cpu,cpu,cpu"});
  ASSERT_EQ(run(one).status, 0);
  const RunResult result = run(ranks);
  ASSERT_EQ(result.status, 0) << result.err;
  EXPECT_EQ(read_text(path("ranks.csv")), read_text(path("one.csv")));
  EXPECT_EQ(read_text(path("ranks.npy")), read_text(path("one.npy")));
}

TEST_F(Cli, ThreadRankErrorsAreOneSentence) {
  synth(1001, 6, 2);
  // Row 900 is rank 2's (rows 667 to 1000) of 3: every rank stops with its sentence.
  Array x = read_npy(path("X.npy"));
  x.values[900 * 6 + 2] = std::nan("");
  write_npy(path("Xbad.npy"), x.shape, x.values);
  std::vector<std::string> bad = {"profile", "--x", p("Xbad.npy"), "--y", p("Y.npy"), "--devices", "cpu,cpu,cpu"};
  for (const std::string& flag : output_flags()) bad.push_back(flag);
  const std::string line = expect_failure(bad, 2, "rank 2 of 3");
  EXPECT_NE(line.find("row 900"), std::string::npos) << line;

  const auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"profile", "--x", p("X.npy"), "--y", p("Y.npy")};
    for (const std::string& flag : output_flags()) args.push_back(flag);
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  };
  // GPU 63 exists nowhere: no device, no CUDA build, or too few GPUs; each one sentence.
  expect_failure(with({"--devices", "0,63"}), 2, "--devices 0,63");
  if (cuda_device_count() == 0) expect_failure(with({"--devices", "0,1"}), 2, "lists GPUs, but this");
  expect_failure(with({"--devices", "cpu,0"}), 2, "mixes GPUs and cpu");
  expect_failure(with({"--devices", "1,1"}), 2, "twice");
  expect_failure(with({"--devices", "two"}), 2, "comma-separated list of GPU numbers");
  expect_failure(with({"--devices", "cpu,cpu", "--device", "cuda"}), 2, "contradicts");
  expect_failure(with({"--devices", "cpu,cpu", "--estimators", "4,8"}), 2, "--estimators");
  // NCCL asked for where it cannot run.
  expect_failure(with({"--devices", "cpu,cpu", "--reduction", "nccl"}), 2, "engine is the CPU");
  expect_failure(with({"--reduction", "nccl"}), 2, "this run has one");
  expect_failure(with({"--reduction", "ring"}), 2, "--reduction must be auto, host or nccl");
  // The sweep takes --devices too.
  expect_failure({"sweep", "--x", p("X.npy"), "--y", p("Y.npy"), "--batch-sizes", "4", "--lrs", "0.1",
                  "--steps", "5", "--out", p("runs.csv"), "--devices", "cpu,gpu"},
                 2, "--devices");
}

}  // namespace
}  // namespace gradnoise
