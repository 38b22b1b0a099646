// gradnoise profile: load data, load or build a model, profile it once, write
// the report, the curve and the per-parameter statistics.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cli/cli.hpp"
#include "gradnoise/cuda.hpp"
#include "gradnoise/data.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "gradnoise/curvature.hpp"
#include "gradnoise/krylov.hpp"
#include "gradnoise/report.hpp"
#include "gradnoise/session.hpp"
#include "gradnoise/shape.hpp"
#include "backend.hpp"
#include "comm.hpp"
#include "distributed.hpp"
#include "cli/ranks.hpp"

namespace gradnoise::cli {
namespace {

// Default chunks: on the CPU a chunk's inputs and their centred copy should
// stay in cache across the passes the engine makes over them (1024 rows ran
// Fashion-MNIST 1.6-2x faster than 4096 on a 2-core EPYC); on a GPU a chunk
// should keep the device busy.

void check_combinations(const ProfileArgs& args) {
  check_data_model_combinations(args.inputs, /*seed_also_samples=*/false);
  if (args.curve_path.empty()) {
    if (args.curve_loss) throw InputError("--curve-loss adds columns to --curve; give --curve too.");
    if (args.batch_sizes_option->count() > 0 && args.tests_csv_path.empty()) {
      throw InputError("--batch-sizes chooses the rows of --curve (or --tests-csv); give one of them too.");
    }
  }
  if (args.chunk_rows < 0) {
    throw InputError("--chunk-rows must be at least 1 (or 0 for the device's default).");
  }
  if (args.spectrum < 0) throw InputError("--spectrum must be a number of eigenvalues ≥ 1 (or 0 for none).");
  if (args.spectrum == 0) {
    if (args.exact_trace_sq) throw InputError("--exact-trace-sq belongs to --spectrum; give --spectrum K too.");
    if (!args.spectrum_csv_path.empty()) {
      throw InputError("--spectrum-csv writes the --spectrum eigenvalues; give --spectrum K too.");
    }
  }
  if (args.hessian != "full" && args.hessian != "gn") {
    throw InputError("--hessian must be full or gn (Gauss-Newton), not '" + args.hessian + "'.");
  }
  if (!(args.theta >= 0) || !std::isfinite(args.theta)) {
    throw InputError("--theta must be a positive number, e.g. --theta 0.5.");
  }
  if (args.theta == 0 && !args.tests_csv_path.empty()) {
    throw InputError("--tests-csv writes the --theta batch-size tests; give --theta T too.");
  }
}

/// "B_SMALL,B_BIG[,PAIRS]" for --estimators.
std::vector<std::int64_t> parse_estimators(const std::string& spec) {
  std::vector<std::int64_t> values;
  std::size_t start = 0;
  while (start <= spec.size()) {
    const std::size_t comma = std::min(spec.find(',', start), spec.size());
    const std::string item = spec.substr(start, comma - start);
    std::size_t used = 0;
    long long value = 0;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || value < 1) {
      used = 0;
    }
    if (used == 0) {
      throw InputError("--estimators " + spec +
                       " must be B_SMALL,B_BIG or B_SMALL,B_BIG,PAIRS with positive integers, "
                       "e.g. --estimators 64,1024,200.");
    }
    values.push_back(value);
    start = comma + 1;
  }
  if (values.size() < 2 || values.size() > 3) {
    throw InputError("--estimators " + spec + " must give two batch sizes and optionally a pair count.");
  }
  if (values.size() == 2) values.push_back(100);
  // Each pair is two minibatch gradients: bound the work one value can ask for.
  constexpr std::int64_t kMaxPairs = 1000000;
  if (values[2] > kMaxPairs) {
    throw InputError("--estimators asks for " + std::to_string(values[2]) + " pairs; at most " +
                     std::to_string(kMaxPairs) + " are allowed (the estimators' error falls as "
                     "1/sqrt(pairs), so a few hundred are usually enough).");
  }
  return values;
}

}  // namespace

CLI::App* add_profile_command(CLI::App& app, ProfileArgs& args) {
  CLI::App* command = app.add_subcommand(
      "profile", "Profile the gradient noise of a model on a data set, exactly.");
  add_data_model_options(command, args.inputs, "Seed of --init gaussian and of --estimators");
  args.device_option = command->add_option("--device", args.device, "auto, cpu or cuda")->capture_default_str();
  command->add_option("--devices", args.devices,
                      "Split the rows over ranks run as threads of this process, one per listed "
                      "GPU (e.g. 0,1,2,3), or CPU ranks (cpu,cpu); not under mpirun")
      ->type_name("LIST");
  command->add_option("--reduction", args.reduction,
                      "Over ranks, how the Sigma/H products are summed: auto (NCCL, GPU to GPU, "
                      "when every rank has a GPU and libnccl loads; else host), host or nccl")
      ->capture_default_str();
  command->add_option("--gpu-dtype", args.gpu_dtype,
                      "On a GPU, keep the data on the device in float32 (half the bytes; every "
                      "sum is still float64) or float64")
      ->capture_default_str();
  command->add_option("--out", args.out_path, "Write the report as JSON")
      ->type_name("FILE");
  command->add_option(
      "--curve", args.curve_path,
      "Write E|g_B - G|^2 for each batch size as CSV (without and with replacement)")
      ->type_name("FILE");
  command->add_flag("--curve-loss", args.curve_loss,
                    "Add the minibatch-loss variance columns to --curve");
  args.batch_sizes_option =
      command->add_option("--batch-sizes", args.batch_sizes,
                          "Batch sizes of --curve: all (1..N), pow2 (1, 2, 4, ..., N) or a list "
                          "like 1,10,100")
          ->capture_default_str();
  command->add_option("--param-stats", args.param_stats_path,
                      "Write a P x 2 float64 .npy of (param_mean, param_var) per parameter")
      ->type_name("FILE");
  command->add_option("--chunk-rows", args.chunk_rows,
                      "Rows per streamed chunk (0: " + std::to_string(detail::kCpuChunkRows) +
                          " on the CPU, " + std::to_string(detail::default_chunk_rows(detail::Place::cuda)) + " on a GPU)")
      ->capture_default_str();
  command->add_option("--spectrum", args.spectrum,
                      "Top K eigenvalues of the gradient covariance Σ (model and per layer) and "
                      "of the Hessian, tr(Σ²), effective rank, B_noise")
      ->type_name("K");
  command->add_flag("--quiet", args.quiet, "No progress line while eigensolvers run");
  command->add_flag("--exact-trace-sq", args.exact_trace_sq,
                    "With --spectrum: compute tr(Σ²) exactly even when it costs many passes");
  command->add_option("--hessian", args.hessian, "With --spectrum: full or gn (Gauss-Newton)")
      ->capture_default_str();
  command->add_option("--spectrum-csv", args.spectrum_csv_path,
                      "With --spectrum: write scope,rank,eigenvalue rows")
      ->type_name("FILE");
  command->add_option("--theta", args.theta,
                      "Population norm, inner-product and orthogonality batch-size tests at this "
                      "theta, the smallest passing batch sizes, and the gradient SNR")
      ->type_name("T");
  command->add_option("--tests-csv", args.tests_csv_path,
                      "With --theta: write the three tests for each --batch-sizes size")
      ->type_name("FILE");
  command->add_option("--estimators", args.estimators,
                      "McCandlish two-batch estimators from real minibatch pairs (with "
                      "replacement) against the exact values: B_SMALL,B_BIG[,PAIRS] (default 100 pairs)")
      ->type_name("LIST");
  command->footer(
      "Examples:\n"
      "  gradnoise profile --dataset fashion-mnist --loss ce --out report.json --curve curve.csv\n"
      "  gradnoise profile --dataset fashion-mnist --split test --limit 1000 --hidden 128\n"
      "  gradnoise profile --x X.npy --y Y.npy --init lstsq --curve curve.csv --batch-sizes pow2\n"
      "  gradnoise profile --x X.npy --y labels.npy --loss ce --layer W1.npy:b1.npy --layer W2.npy \\\n"
      "      --param-stats stats.npy\n"
      "  gradnoise profile --dataset fashion-mnist --loss ce --spectrum 10 --theta 0.5 \\\n"
      "      --estimators 64,1024 --out report.json --spectrum-csv spectrum.csv --tests-csv tests.csv\n"
      "The model is either given by --layer files or built with widths {D, hidden..., K}\n"
      "(K: target columns for mse, classes for ce). The summary goes to stdout, warnings\n"
      "to stderr; outputs are written only when everything succeeded.");
  return command;
}

/// "\r<stage>: pass 7/60, residual 3e-06, 4.2 s" on a terminal while an
/// eigensolver runs (spectrum, Hessian): long passes are not silent. Off with
/// --quiet or when stderr is not a terminal; each stage ends its line.
class EigenProgressLine {
 public:
  explicit EigenProgressLine(bool enabled) : enabled_(enabled) {}
  ~EigenProgressLine() { finish(); }
  EigenProgress for_stage(std::string stage) {
    if (!enabled_) return {};
    return [this, stage = std::move(stage)](std::int64_t pass, std::int64_t max_passes, double residual) {
      if (stage != stage_) {
        finish();
        stage_ = stage;
        start_ = std::chrono::steady_clock::now();
      }
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      char line[160];
      std::snprintf(line, sizeof line, "\r%s: pass %lld/%lld, residual %.1e, %.1f s ", stage_.c_str(),
                    static_cast<long long>(pass), static_cast<long long>(max_passes), residual, elapsed);
      std::cerr << line << std::flush;
      open_ = true;
    };
  }
  void finish() {
    if (open_) std::cerr << "\n" << std::flush;
    open_ = false;
  }

 private:
  bool enabled_;
  bool open_ = false;
  std::string stage_;
  std::chrono::steady_clock::time_point start_;
};

namespace {

/// Refuses what needs every row on one process when the data are split over
/// ranks (MPI's or --devices'; docs/MPI.md).
void check_ranks(const ProfileArgs& args) {
  if (!args.estimators.empty()) {
    throw InputError("--estimators draws minibatches from every row, which no one rank "
                     "holds; run it in one process (without mpirun or --devices).");
  }
  if (args.inputs.init == "lstsq") {
    throw InputError("--init lstsq fits the model on every row, which no one rank holds; "
                     "fit it in one process and give the weights with --layer.");
  }
  if (args.exact_trace_sq) {
    throw InputError("--exact-trace-sq needs every row on one process; across ranks "
                     "--spectrum reports the lower bound of tr(Σ²) only.");
  }
}

/// report.json's "ranks", "bytes_communicated" (summed over the ranks:
/// every byte sent or received, for the profile's merge and in all) and
/// "reduction" (the path the products' sums took).
void add_ranks_json_summed(nlohmann::ordered_json& report, detail::Communicator& comm,
                           std::uint64_t profile_bytes, const std::string& reduction) {
  std::vector<double> bytes{static_cast<double>(profile_bytes),
                            static_cast<double>(comm.bytes_communicated())};
  comm.sum(bytes);
  add_ranks_json(report, comm.size(), static_cast<std::uint64_t>(bytes[0]),
                 static_cast<std::uint64_t>(bytes[1]), reduction);
}

/// mean‖g_i‖²'s rounding floor from Σ‖x_i‖² and Σ‖y_i‖² over every rank.
double rounding_floor(detail::Communicator& comm, const LoadedData& loaded) {
  std::vector<double> sums(2, 0.0);
  const detail::StoredData& data = loaded.data;
  constexpr std::int64_t kChunkRows = 1024;
  std::vector<double> rows(static_cast<std::size_t>(std::min(data.n, kChunkRows) * data.d));
  for (std::int64_t first = 0; first < data.n; first += kChunkRows) {
    const std::int64_t count = std::min(kChunkRows, data.n - first);
    data.read(first, count, rows.data(), nullptr, nullptr);
    for (std::int64_t j = 0; j < count * data.d; ++j) sums[0] += rows[j] * rows[j];
  }
  for (const double v : data.y) sums[1] += v * v;
  comm.sum(sums);
  return rounding_grad_norm_sq(sums[0], sums[1], loaded.whole_rows, !loaded.data.y.empty());
}

/// One process, or one rank of an MPI job or of --devices (docs/MPI.md):
/// each rank reads its own rows; every collective step below is taken by
/// every rank, and work that may fail on one rank runs inside comm.together().
int run_profile_rank(const ProfileArgs& args, detail::Communicator& comm) {
  const bool ranks = comm.size() > 1;
  const bool writer = comm.rank() == 0;
  Loss loss{};
  SessionOptions session_options;
  detail::Reduction reduction{};
  OutputSet outputs;
  std::vector<std::int64_t> estimator_spec;
  bool param_stats = false;
  LoadedData loaded;
  comm.together([&] {
    set_current_stage("checking the options");
    check_combinations(args);
    if (ranks) check_ranks(args);
    loss = parse_loss(args.inputs.loss);
    session_options.loss = loss;
    session_options.device =
        mentioning("--device", args.device, [&] { return parse_device(args.device); });
    session_options.gpu_dtype =
        mentioning("--gpu-dtype", args.gpu_dtype, [&] { return parse_gpu_dtype(args.gpu_dtype); });
    session_options.chunk_rows = args.chunk_rows;  // 0: the device's default
    reduction = detail::parse_reduction(args.reduction);
    param_stats = !args.param_stats_path.empty();

    outputs.add_inputs(input_files(args.inputs));
    if (!args.out_path.empty()) outputs.add_text("--out", args.out_path);
    if (!args.curve_path.empty()) outputs.add_text("--curve", args.curve_path);
    if (!args.param_stats_path.empty()) outputs.add_npy("--param-stats", args.param_stats_path);
    if (!args.spectrum_csv_path.empty()) outputs.add_text("--spectrum-csv", args.spectrum_csv_path);
    if (!args.tests_csv_path.empty()) outputs.add_text("--tests-csv", args.tests_csv_path);
    if (!args.estimators.empty()) estimator_spec = parse_estimators(args.estimators);
    // Batch tests need the per-parameter variances (for the GSNR).
    param_stats = param_stats || args.theta > 0;
    // Rank 0 alone writes the outputs.
    if (writer) outputs.check_writable_all();

    // A GPU's context takes a few hundred milliseconds to create: one
    // process creates it while its data loads (ranks pick their GPU later).
    struct Joined {
      std::thread thread;
      ~Joined() {
        if (thread.joinable()) thread.join();
      }
    } context;
    if (!ranks && session_options.device != Device::cpu && cuda_built()) {
      context.thread = std::thread([] { warm_up_cuda(); });
    }
    loaded = load_data(args.inputs, loss, comm.rank(), comm.size());
  });
  // The parts of the noise's shape that only the CPU computes (per-layer
  // spectra, tr(Σ²), the batch tests' own pass) take the CPU's chunk default.
  const std::int64_t cpu_chunk_rows = args.chunk_rows > 0 ? args.chunk_rows : detail::kCpuChunkRows;
  // Labels: the classes are the largest label + 1 over every rank's rows.
  if (ranks && loss_targets(loss) == TargetKind::labels) {
    loaded.data.k = comm.max(loaded.data.k);
    loaded.description["k"] = loaded.data.k;
  }

  BuiltModel built;
  std::vector<std::int64_t> batch_sizes;
  std::shared_ptr<const detail::DataPart> part;
  std::optional<Profiler> session;
  detail::RankBackend backend;
  comm.together([&] {
    built = load_model(args.inputs, loaded, loss);
    if (!args.curve_path.empty() || !args.tests_csv_path.empty()) {
      batch_sizes = mentioning("--batch-sizes", args.batch_sizes,
                               [&] { return parse_batch_sizes(args.batch_sizes, loaded.whole_rows); });
    }
    set_current_stage("profiling");
    // The session borrows the loaded rows, which outlive it; it picks the
    // device once, and every data pass below runs on it (over every rank).
    part = std::make_shared<const detail::DataPart>(
        std::shared_ptr<const DataSource>(std::shared_ptr<void>(), &loaded.data), loaded.first_row,
        loaded.whole_rows);
  });
  // Collective, agreeing itself: the device, and the path the sums take.
  backend = detail::make_rank_backend(comm, session_options, part, reduction);
  comm.together([&] { session.emplace(part, session_options, backend.backend); });
  const Model& model = built.model;
  const nlohmann::ordered_json& model_description = built.description;
  const std::int64_t chunk_rows = session->chunk_rows();
  const std::uint64_t bytes_before_profile = comm.bytes_communicated();
  Profile result = session->profile(model, param_stats);
  const std::uint64_t profile_bytes = comm.bytes_communicated() - bytes_before_profile;
  // At an exact fit the gradients are rounding error and their ratio means nothing.
  const std::string rounding_warning = undefine_rounding_ratios(
      result, ranks ? rounding_floor(comm, loaded) : rounding_grad_norm_sq(loaded.data));

  EigenProgressLine progress(writer && !args.quiet && ::isatty(STDERR_FILENO));
  ShapeOptions shape_options;
  shape_options.spectrum = args.spectrum;
  shape_options.gauss_newton = args.hessian == "gn";
  shape_options.exact_trace_sq = args.exact_trace_sq;
  shape_options.theta = args.theta;
  shape_options.batch_sizes = batch_sizes;
  shape_options.chunk_rows = cpu_chunk_rows;
  shape_options.progress = [&progress](const std::string& stage) { return progress.for_stage(stage); };
  if (ranks) {
    // Summed over the ranks' parts, as the session's own products are.
    shape_options.layer_covariance = [&](std::int64_t layer) {
      return detail::distributed_layer_covariance(comm, model, *part, loss, result.param_mean,
                                                  cpu_chunk_rows, layer);
    };
    shape_options.sum_over_parts = [&](double value) { return comm.sum(value); };
  }
  if (args.spectrum > 0 || args.theta > 0) set_current_stage("analysing the noise's shape");
  ShapeResults shape = noise_shape(*session, model, result, shape_options);
  if (!estimator_spec.empty()) {
    set_current_stage("sampling minibatch pairs for the estimators");
    shape.estimators = mentioning("--estimators", args.estimators, [&] {
      return two_batch_estimators(model, loaded.data, loss, result, estimator_spec[0],
                                  estimator_spec[1], estimator_spec[2], args.inputs.seed, cpu_chunk_rows);
    });
  }

  progress.finish();
  set_current_stage("preparing the outputs");
  ReportContext context;
  context.loss = loss;
  context.model = model_description;
  context.data = loaded.description;
  context.options = {{"device_requested", args.device},
                     {"chunk_rows", chunk_rows},
                     {"param_stats", param_stats},
                     {"spectrum", args.spectrum},
                     {"hessian", args.hessian},
                     {"theta", args.theta},
                     {"estimators", args.estimators}};
  if (!args.out_path.empty()) {
    nlohmann::ordered_json report = report_json(result, context);
    add_shape_json(report, shape);
    add_ranks_json_summed(report, comm, profile_bytes, backend.reduction);
    outputs.set_text(args.out_path, report.dump(2) + "\n");
  }
  if (!args.spectrum_csv_path.empty()) outputs.set_text(args.spectrum_csv_path, spectrum_csv(shape));
  if (!args.tests_csv_path.empty()) outputs.set_text(args.tests_csv_path, batch_tests_csv(*shape.tests));
  if (!args.curve_path.empty()) {
    outputs.set_text(args.curve_path,
                     curve_csv(batch_size_curve(result, batch_sizes), args.curve_loss));
  }
  if (!args.param_stats_path.empty()) {
    const std::size_t num_params = result.param_mean.size();
    if (result.param_var.size() != num_params) {
      throw RuntimeError("the engine returned " + std::to_string(result.param_var.size()) +
                         " parameter variances for " + std::to_string(num_params) +
                         " parameters; cannot write --param-stats.");
    }
    std::vector<double> stats(2 * num_params);
    for (std::size_t j = 0; j < num_params; ++j) {
      stats[2 * j] = result.param_mean[j];
      stats[2 * j + 1] = result.param_var[j];
    }
    outputs.set_npy(args.param_stats_path, {static_cast<std::int64_t>(num_params), 2},
                    std::move(stats));
  }
  comm.together([&] {
    if (writer) outputs.commit();
  });
  if (!writer) return 0;

  // stdout holds the output given as "-", alone; the summary goes to stderr.
  std::ostream& summary = outputs.writes_stdout() ? std::cerr : std::cout;
  summary << summary_text(result, context) << shape_summary_text(shape);
  if (ranks) {
    summary << "ranks   " << comm.size() << " (" << comm.library() << "), the profile's merge moved "
            << profile_bytes << " bytes on rank 0; sums of products: " << backend.reduction << "\n";
  }
  for (const std::string& path : {args.out_path, args.curve_path, args.param_stats_path,
                                  args.spectrum_csv_path, args.tests_csv_path}) {
    if (!path.empty()) summary << "wrote " << path << "\n";
  }
  summary.flush();
  for (const std::string& warning : profile_warnings(result)) {
    std::cerr << "gradnoise: warning: " << warning << "\n";
  }
  if (!rounding_warning.empty()) std::cerr << "gradnoise: warning: " << rounding_warning << "\n";
  return 0;
}

}  // namespace

int run_profile(const ProfileArgs& args) { return run_command_ranks(args, run_profile_rank); }

}  // namespace gradnoise::cli
