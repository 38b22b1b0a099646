// gradnoise synth: Gaussian linear-regression data with a known teacher, for
// checks against closed forms and for trying the tool without a data set.
#include <iostream>
#include <string>

#include "cli/cli.hpp"
#include "gradnoise/io.hpp"

namespace gradnoise::cli {

CLI::App* add_synth_command(CLI::App& app, SynthArgs& args) {
  CLI::App* command = app.add_subcommand(
      "synth", "Write synthetic regression data y = W* x + sigma eps (Gaussian x) as .npy.");
  command->add_option("--n", args.n, "Number of samples")->required();
  command->add_option("--d", args.d, "Input dimension")->required();
  command->add_option("--k", args.k, "Target columns")->capture_default_str();
  command->add_option("--spectrum", args.spectrum,
                      "Input covariance eigenvalues: identity, powerlaw:ALPHA (lambda_j = j^-ALPHA) "
                      "or a comma-separated list of d values")
      ->capture_default_str();
  command->add_option("--mean", args.mean, "Shift added to every input coordinate")
      ->capture_default_str();
  command->add_option("--label-noise", args.label_noise, "sigma of the Gaussian label noise")
      ->capture_default_str();
  command->add_option("--seed", args.seed, "Seed (Philox: same data on every platform)")
      ->check(non_negative_integer())
      ->capture_default_str();
  command->add_option("--x-out", args.x_out, "Write X (n x d, float64 .npy) here")->type_name("FILE")->required();
  command->add_option("--y-out", args.y_out, "Write Y (n x k, float64 .npy) here")->type_name("FILE")->required();
  command->add_option("--teacher-out", args.teacher_out,
                      "Write the teacher W* (k x d, float64 .npy) here")
      ->type_name("FILE");
  command->footer(
      "Examples:\n"
      "  gradnoise synth --n 1000 --d 20 --x-out X.npy --y-out Y.npy\n"
      "  gradnoise synth --n 5000 --d 50 --k 3 --spectrum powerlaw:1.5 --label-noise 0.1 \\\n"
      "      --seed 7 --x-out X.npy --y-out Y.npy --teacher-out W.npy\n"
      "  gradnoise profile --x X.npy --y Y.npy --init lstsq --curve curve.csv");
  return command;
}

int run_synth(const SynthArgs& args) {
  set_current_stage("checking the options");
  if (args.n < 1) throw InputError("--n must be at least 1 sample.");
  if (args.d < 1) throw InputError("--d must be at least 1 feature.");
  if (args.k < 1) throw InputError("--k must be at least 1 target column.");
  if (!(args.label_noise >= 0)) throw InputError("--label-noise must be a standard deviation >= 0.");

  OutputSet outputs;
  outputs.add_npy("--x-out", args.x_out);
  outputs.add_npy("--y-out", args.y_out);
  if (!args.teacher_out.empty()) outputs.add_npy("--teacher-out", args.teacher_out);
  outputs.check_writable_all();

  SynthOptions options;
  options.n = args.n;
  options.d = args.d;
  options.k = args.k;
  options.spectrum = args.spectrum;
  options.mean = args.mean;
  options.label_noise = args.label_noise;
  options.seed = args.seed;
  set_current_stage("generating the data");
  SynthData synth = mentioning("--spectrum", args.spectrum, [&] { return make_synthetic(options); });

  outputs.set_npy(args.x_out, {args.n, args.d}, std::move(synth.data.x));
  outputs.set_npy(args.y_out, {args.n, args.k}, std::move(synth.data.y));
  if (!args.teacher_out.empty()) {
    outputs.set_npy(args.teacher_out, {args.k, args.d}, std::move(synth.teacher));
  }
  outputs.commit();

  std::cout << "wrote X (" << args.n << " x " << args.d << ") to " << args.x_out << "\n"
            << "wrote Y (" << args.n << " x " << args.k << ") to " << args.y_out << "\n";
  if (!args.teacher_out.empty()) {
    std::cout << "wrote W* (" << args.k << " x " << args.d << ") to " << args.teacher_out << "\n";
  }
  return 0;
}

}  // namespace gradnoise::cli
