// gradnoise sweep: real SGD runs over batch sizes × learning rates ×
// replicas, the noise profiled at logged steps; one CSV row per run and
// logged step, a JSON summary per grid point, checkpoints to resume from.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/cli.hpp"
#include "cli/ranks.hpp"
#include "cli/sweep_ranks.hpp"
#include "comm.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/profile.hpp"
#include "backend.hpp"
#include "gradnoise/report.hpp"
#include "gradnoise/sweep.hpp"

namespace gradnoise::cli {
namespace {

/// "0.1,0.05,1e-3": positive finite learning rates.
std::vector<double> parse_lrs(const std::string& spec) {
  std::vector<double> lrs;
  std::size_t start = 0;
  while (start <= spec.size()) {
    const std::size_t comma = std::min(spec.find(',', start), spec.size());
    const std::string item = spec.substr(start, comma - start);
    std::size_t used = 0;
    double value = 0;
    try {
      value = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || !(value > 0) || !std::isfinite(value)) {
      throw InputError("--lrs " + spec +
                       " must be a comma-separated list of positive learning rates, e.g. "
                       "--lrs 0.1,0.03,0.01.");
    }
    lrs.push_back(value);
    start = comma + 1;
  }
  return lrs;
}

/// A one-line progress bar on stderr, redrawn in place.
class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled), start_(std::chrono::steady_clock::now()) {}
  void update(std::int64_t done, std::int64_t total, std::int64_t step, std::int64_t steps) {
    if (!enabled_) return;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    const double fraction = total > 0 ? static_cast<double>(done) / static_cast<double>(total) : 1;
    const int width = 30, filled = static_cast<int>(fraction * width);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(width, '.');
    char line[160];
    const double eta = fraction > 0 ? elapsed * (1 - fraction) / fraction : 0;
    std::snprintf(line, sizeof line, "\rsweep [%s] %3.0f%%  step %lld/%lld  %.1f s, about %.0f s left ",
                  bar.c_str(), 100 * fraction, static_cast<long long>(step),
                  static_cast<long long>(steps), elapsed, eta);
    std::cerr << line << std::flush;
    if (done == total) std::cerr << "\n";
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

CLI::App* add_sweep_command(CLI::App& app, SweepArgs& args) {
  CLI::App* command = app.add_subcommand(
      "sweep",
      "Train many SGD runs (batch sizes x learning rates x replicas) and record the noise.");
  add_data_model_options(command, args.inputs,
                         "Seed of --init gaussian and of the minibatch draws and label noise");
  command->add_option("--batch-sizes", args.batch_sizes,
                      "Batch sizes: a list like 1,8,64 or pow2 (1, 2, 4, ..., N)")
      ->required();
  command->add_option("--lrs", args.lrs, "Learning rates, e.g. 0.1,0.03,0.01")->required();
  command->add_option("--replicas", args.replicas, "Independent runs per grid point")
      ->capture_default_str();
  command->add_option("--first-replica", args.first_replica,
                      "Index of the first replica (to replay or split a sweep)")
      ->capture_default_str();
  command->add_option("--steps", args.steps, "SGD steps of every run")->required();
  command->add_option("--sampling", args.sampling,
                      "with (replacement), without (reshuffled each epoch) or fixed (in order)")
      ->capture_default_str();
  command->add_option("--label-noise", args.label_noise,
                      "Fresh N(0, SIGMA^2) noise on every drawn target (--loss mse)")
      ->type_name("SIGMA");
  command->add_option("--weight-decay", args.weight_decay, "Adds this times theta to each gradient");
  command->add_option("--momentum", args.momentum, "Heavy-ball momentum in [0, 1)");
  command->add_option("--log-every", args.log_every,
                      "Log every K steps (and at 0 and at --steps); default --steps/20")
      ->type_name("K");
  command->add_flag("--eval-test", args.test,
                    "With --dataset fashion-mnist: also log loss and accuracy on the test split");
  command->add_option("--test-limit", args.test_limit, "Keep the first N test samples (0: all)");
  command->add_option("--test-x", args.test_x_path, "Held-out inputs (.npy or .csv)")->type_name("FILE");
  command->add_option("--test-y", args.test_y_path, "Held-out targets or labels")->type_name("FILE");
  command->add_option("--out", args.out_path, "One CSV row per run and logged step")
      ->type_name("FILE");
  command->add_option("--summary", args.summary_path,
                      "JSON summary: per grid point the loss, weight variance and divergence")
      ->type_name("FILE");
  command->add_option("--final-weights", args.weights_path,
                      "Write the runs' final weights as a runs x P float64 .npy")
      ->type_name("FILE");
  command->add_option("--checkpoint", args.checkpoint_path,
                      "Save the state here as it goes, and resume from it if it exists")
      ->type_name("FILE");
  command->add_option("--checkpoint-every", args.checkpoint_every,
                      "Seconds between checkpoint writes")
      ->capture_default_str();
  command->add_flag("--no-profile", args.no_profile,
                    "Skip the exact noise profile (|G|^2, tr Sigma, B_simple) at logged steps");
  command->add_option("--divergence-factor", args.divergence_factor,
                      "A run diverged when a loss exceeds this times the starting loss")
      ->capture_default_str();
  command->add_option("--threads", args.threads, "Worker threads (0: all); results do not change");
  args.device_option =
      command->add_option("--device", args.device,
                          "Where the SGD steps run: cpu, cuda (one GPU thread per run) or auto (the "
                          "GPU for small models when there is one); logging stays on the CPU")
          ->capture_default_str();
  command->add_option("--devices", args.devices,
                      "Divide the grid points among ranks run as threads of this process, one per "
                      "listed GPU (e.g. 0,1), or CPU ranks (cpu,cpu); not under mpirun")
      ->type_name("LIST");
  command->add_flag("--quiet", args.quiet, "No progress bar");
  command->footer(
      "Examples:\n"
      "  gradnoise sweep --x X.npy --y Y.npy --no-bias --init zeros --batch-sizes 1,4,16,64 \\\n"
      "      --lrs 0.1,0.03 --replicas 32 --steps 2000 --log-every 100 \\\n"
      "      --out runs.csv --summary summary.json\n"
      "  gradnoise sweep --dataset fashion-mnist --limit 10000 --eval-test --loss ce \\\n"
      "      --batch-sizes 16,64,256 --lrs 0.3,0.1,0.03 --steps 500 --summary summary.json\n"
      "Replica r draws the same minibatches at every learning rate (common random\n"
      "numbers); any run replays alone with --first-replica r --replicas 1.");
  return command;
}

namespace {

/// One process, or one rank of an MPI job or of --devices (docs/MPI.md
/// "Sweeps"): every rank loads the whole data and runs its share of the grid
/// points.
int run_sweep_rank(const SweepArgs& args, detail::Communicator& comm) {
  const bool writer = comm.rank() == 0;
  Loss loss{};
  SweepConfig config;
  OutputSet outputs;
  LoadedData train;
  BuiltModel model;
  std::optional<LoadedData> test;
  comm.together([&] {
    set_current_stage("checking the options");
    check_data_model_combinations(args.inputs, /*seed_also_samples=*/true);
    loss = parse_loss(args.inputs.loss);
    if (!args.test_x_path.empty() != !args.test_y_path.empty()) {
      throw InputError("--test-x and --test-y go together; give both.");
    }
    if (args.test && args.inputs.dataset.empty()) {
      throw InputError("--eval-test uses the fashion-mnist test split and needs --dataset; give "
                       "--test-x and --test-y for your own held-out data.");
    }
    if (args.test && !args.test_x_path.empty()) {
      throw InputError("--eval-test and --test-x/--test-y both give test data; use one.");
    }
    if (args.label_noise != 0 && loss != Loss::squared) {
      throw InputError("--label-noise adds Gaussian noise to real targets and needs --loss mse.");
    }
    if (!(args.momentum >= 0 && args.momentum < 1)) throw InputError("--momentum must lie in [0, 1).");
    if (args.test_limit < 0) throw InputError("--test-limit must be ≥ 0 (0 keeps them all).");
    if (args.steps < 1) throw InputError("--steps must be at least 1.");
    if (args.log_every < 0) throw InputError("--log-every must be at least 1 step.");
    if (!(args.checkpoint_every >= 0)) throw InputError("--checkpoint-every must be ≥ 0 seconds.");
    if (args.threads < 0) throw InputError("--threads must be ≥ 0 (0: all hardware threads).");
    if (args.out_path.empty() && args.summary_path.empty() && args.weights_path.empty()) {
      throw InputError("nothing to write: give --out runs.csv, --summary summary.json or both.");
    }

    config.loss = loss;
    config.lrs = parse_lrs(args.lrs);
    config.replicas = args.replicas;
    config.first_replica = args.first_replica;
    config.steps = args.steps;
    config.sampling = mentioning("--sampling", args.sampling, [&] { return parse_sampling(args.sampling); });
    config.label_noise = args.label_noise;
    config.weight_decay = args.weight_decay;
    config.momentum = args.momentum;
    config.log_every = args.log_every > 0 ? args.log_every : std::max<std::int64_t>(1, (args.steps + 19) / 20);
    config.seed = args.inputs.seed;
    config.profile = !args.no_profile;
    config.divergence_factor = args.divergence_factor;
    config.threads = args.threads;
    config.device = mentioning("--device", args.device, [&] { return parse_device(args.device); });

    outputs.add_inputs(input_files(args.inputs));
    if (!args.test_x_path.empty()) outputs.add_inputs({{"--test-x", args.test_x_path}});
    if (!args.test_y_path.empty()) outputs.add_inputs({{"--test-y", args.test_y_path}});
    if (!args.out_path.empty()) outputs.add_text("--out", args.out_path);
    if (!args.summary_path.empty()) outputs.add_text("--summary", args.summary_path);
    if (!args.weights_path.empty()) outputs.add_npy("--final-weights", args.weights_path);
    // Written as the sweep runs (and read to resume): no other output or input may be it.
    if (!args.checkpoint_path.empty()) outputs.add_external("--checkpoint", args.checkpoint_path);
    if (writer) outputs.check_writable_all();

    train = load_data(args.inputs, loss);
    model = load_model(args.inputs, train, loss);
    config.batch_sizes = mentioning("--batch-sizes", args.batch_sizes,
                                    [&] { return parse_batch_sizes(args.batch_sizes, train.data.n); });

    if (args.test) {
      set_current_stage("loading the test data");
      DataModelArgs test_args = args.inputs;
      test_args.split = "test";
      test_args.limit = args.test_limit;
      test = load_data(test_args, loss);
      test->source = "--eval-test (the fashion-mnist test split)";
    } else if (!args.test_x_path.empty()) {
      set_current_stage("loading the test data");
      test = load_xy_files("--test-x", args.test_x_path, "--test-y", args.test_y_path, loss,
                           parse_csv_header(args.inputs.csv_header));
    }
    if (test) {
      if (test->data.d != train.data.d) {
        throw InputError(test->source + " has " + std::to_string(test->data.d) +
                         " features per sample but the training data have " +
                         std::to_string(train.data.d) + ".");
      }
      check_fit(model.model, model.source, *test, loss);
    }

    // Every run keeps θ, its last gradient and (with momentum) a velocity.
    const double runs = static_cast<double>(config.batch_sizes.size()) *
                        static_cast<double>(config.lrs.size()) * static_cast<double>(config.replicas);
    check_memory(8.0 * runs * static_cast<double>(model.model.num_params()) * (config.momentum > 0 ? 3 : 2),
                 "--batch-sizes × --lrs × --replicas make " + std::to_string(static_cast<long long>(runs)) +
                     " runs of " + std::to_string(model.model.num_params()) + " parameters");
  });

  set_current_stage("setting up the sweep");
  // A sweep indexes single rows of a float64 Dataset.
  const Dataset train_rows = train.data.release_dataset();
  std::optional<Dataset> test_rows;
  if (test) test_rows = test->data.release_dataset();
  ProfileOptions start_options;
  start_options.loss = loss;
  start_options.device = Device::cpu;
  const Profile start = profile_cpu(model.model, train_rows, start_options);

  SweepResult result;
  if (comm.size() > 1) {
    set_current_stage("running the sweep");
    std::optional<SweepResult> whole =
        run_sweep_over_ranks(comm, model.model, train_rows, test_rows ? &*test_rows : nullptr, config,
                             args.checkpoint_path, args.checkpoint_every);
    if (whole) result = std::move(*whole);
  } else {
    Sweep sweep(model.model, train_rows, test_rows ? &*test_rows : nullptr, config);
    if (!args.checkpoint_path.empty() && std::filesystem::exists(args.checkpoint_path)) {
      set_current_stage("reading the checkpoint");
      mentioning("--checkpoint", args.checkpoint_path,
                 [&] { sweep.restore(read_checkpoint(args.checkpoint_path)); });
      std::cerr << "gradnoise: resuming " << args.checkpoint_path << " at step "
                << (sweep.logs_done() > 0 ? sweep.log_steps()[static_cast<std::size_t>(sweep.logs_done() - 1)] : 0)
                << " of " << config.steps << "\n";
    }

    set_current_stage("running the sweep");
    ProgressBar bar(!args.quiet && isatty(STDERR_FILENO));
    auto last_checkpoint = std::chrono::steady_clock::now();
    const auto total = static_cast<std::int64_t>(sweep.log_steps().size());
    while (!sweep.done()) {
      sweep.advance();
      const std::int64_t done = sweep.logs_done();
      bar.update(done, total, sweep.log_steps()[static_cast<std::size_t>(done - 1)], config.steps);
      const auto now = std::chrono::steady_clock::now();
      if (!args.checkpoint_path.empty() &&
          (sweep.done() || std::chrono::duration<double>(now - last_checkpoint).count() >= args.checkpoint_every)) {
        mentioning("--checkpoint", args.checkpoint_path,
                   [&] { write_file_atomic(args.checkpoint_path, sweep.checkpoint()); });
        last_checkpoint = now;
      }
    }
    result = sweep.result();
  }

  // Rank 0 alone writes the outputs.
  comm.together([&] {
    if (!writer) return;
    set_current_stage("preparing the outputs");
    if (!args.out_path.empty()) outputs.set_text(args.out_path, sweep_rows_csv(result));
    if (!args.summary_path.empty()) {
      const SweepReportContext context{train.description, model.description,
                                       args.test || !args.test_x_path.empty(), args.device};
      outputs.set_text(args.summary_path, sweep_summary_json(result, config, start, context).dump(2) + "\n");
    }
    if (!args.weights_path.empty()) {
      std::vector<double> weights;
      for (const std::vector<double>& run : result.final_weights) {
        weights.insert(weights.end(), run.begin(), run.end());
      }
      outputs.set_npy(args.weights_path,
                      {static_cast<std::int64_t>(result.final_weights.size()), result.num_params},
                      std::move(weights));
    }
    outputs.commit();
  });
  if (!writer) return 0;

  // stdout holds the output given as "-", alone; the summary goes to stderr.
  std::ostream& summary = outputs.writes_stdout() ? std::cerr : std::cout;
  summary << "sweep: " << result.final_weights.size() << " runs x " << config.steps
          << " steps, " << result.run_steps << " SGD steps in " << result.elapsed_s << " s\n";
  summary << "batch_size,lr,train_loss_mean,train_loss_std,weight_var,diverged_fraction\n";
  const auto text = [](const std::optional<double>& value) {
    return value ? std::to_string(*value) : std::string("null");
  };
  for (const GridPointSummary& point : result.grid) {
    summary << point.batch_size << "," << point.lr << "," << text(point.train_loss_mean) << ","
            << text(point.train_loss_std) << "," << text(point.weight_var) << ","
            << point.diverged_fraction << "\n";
  }
  for (const std::string& path : {args.out_path, args.summary_path, args.weights_path}) {
    if (!path.empty()) summary << "wrote " << path << "\n";
  }
  if (!result.divergences.empty()) {
    std::cerr << "gradnoise: warning: " << result.divergences.size()
              << " run(s) diverged; see \"divergences\" in the summary.\n";
  }
  return 0;
}

}  // namespace

int run_sweep(const SweepArgs& args) { return run_command_ranks(args, run_sweep_rank); }

}  // namespace gradnoise::cli
