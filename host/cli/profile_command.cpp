// gradnoise profile: load data, load or build a model, profile it once, write
// the report, the curve and the per-parameter statistics.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "cli/cli.hpp"
#include "gradnoise/data.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "gradnoise/cuda.hpp"
#include "gradnoise/curvature.hpp"
#include "gradnoise/krylov.hpp"
#include "gradnoise/report.hpp"

namespace gradnoise::cli {
namespace {

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string text = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return text + (shape.size() == 1 ? ",)" : ")");
}

std::string lower_extension(const std::string& path) {
  std::string extension = std::filesystem::path(path).extension().string();
  std::transform(extension.begin(), extension.end(), extension.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return extension;
}

/// .npy, or .csv by extension.
Array read_array(const std::string& flag, const std::string& path) {
  return mentioning(flag, path, [&] {
    return lower_extension(path) == ".csv" ? read_csv(path) : read_npy(path);
  });
}

/// Throws InputError naming `what` at the first NaN/inf in `values` (rows×cols).
void require_finite(const std::string& what, const std::vector<double>& values, std::int64_t cols) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      const auto index = static_cast<std::int64_t>(i);
      const std::string where =
          cols > 1 ? "row " + std::to_string(index / cols) + ", column " + std::to_string(index % cols)
                   : "entry " + std::to_string(index);
      throw InputError(what + " holds a non-finite value (" + std::to_string(values[i]) + ") at " +
                       where + "; every value must be finite.");
    }
  }
}

std::vector<std::int64_t> parse_hidden(const std::string& spec) {
  std::vector<std::int64_t> widths;
  std::size_t start = 0;
  while (start <= spec.size()) {
    const std::size_t comma = std::min(spec.find(',', start), spec.size());
    const std::string item = spec.substr(start, comma - start);
    std::size_t used = 0;
    long long width = 0;
    try {
      width = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (item.empty() || used != item.size() || width < 1) {
      throw InputError("--hidden " + spec +
                       " must be a comma-separated list of positive widths, e.g. --hidden 128 or "
                       "--hidden 256,64.");
    }
    widths.push_back(width);
    start = comma + 1;
  }
  return widths;
}

Loss parse_loss(const std::string& name) {
  if (name == "mse") return Loss::squared;
  if (name == "ce") return Loss::cross_entropy;
  throw InputError("--loss must be mse (squared loss) or ce (softmax cross-entropy), not '" + name +
                   "'.");
}

struct LoadedData {
  Dataset data;
  nlohmann::ordered_json description;
  std::string source;  // names the data in messages: "--x X.npy" or "--dataset fashion-mnist"
  std::string target_source;
};

LoadedData load_data(const ProfileArgs& args, Loss loss) {
  current_stage = "loading the data";
  LoadedData loaded;
  if (!args.dataset.empty()) {
    const std::filesystem::path dir = fashion_mnist_dir();
    loaded.data = mentioning("--dataset", args.dataset, [&] {
      return load_fashion_mnist(dir, args.split, loss, args.limit);
    });
    loaded.source = "--dataset " + args.dataset;
    if (args.limit > 0) loaded.source += " --limit " + std::to_string(args.limit);
    loaded.target_source = loaded.source;
    std::string description = "fashion-mnist " + args.split;
    if (args.limit > 0) description += " (first " + std::to_string(args.limit) + ")";
    loaded.description = {{"source", "fashion-mnist"}, {"split", args.split},
                          {"limit", args.limit},      {"dir", dir.string()},
                          {"description", description}};
  } else {
    try {
      loaded.data = load_xy(args.x_path, args.y_path, loss);
    } catch (const InputError& error) {
      // load_xy names the file at fault; say which flags gave it if it did not.
      const std::string message = error.what();
      if (message.find(args.x_path) != std::string::npos ||
          message.find(args.y_path) != std::string::npos) {
        throw;
      }
      throw InputError("--x " + args.x_path + ", --y " + args.y_path + ": " + message);
    }
    loaded.source = "--x " + args.x_path;
    loaded.target_source = "--y " + args.y_path;
    loaded.description = {{"source", "files"},
                          {"x", args.x_path},
                          {"y", args.y_path},
                          {"description", args.x_path + ", " + args.y_path}};
  }

  Dataset& data = loaded.data;
  if (data.n < 2) {
    throw InputError(loaded.source + " holds " + std::to_string(data.n) +
                     (data.n == 1 ? " sample" : " samples") +
                     "; at least 2 are needed for a gradient covariance.");
  }
  require_finite(loaded.source, data.x, data.d);
  require_finite(loaded.target_source, data.y, data.k);
  mentioning(loaded.source, "", [&] { data.validate(loaded.source.c_str()); });
  loaded.description["n"] = data.n;
  loaded.description["d"] = data.d;
  loaded.description["k"] = data.k;
  return loaded;
}

/// --layer W.npy[:b.npy], input to output.
Model load_layers(const std::vector<std::string>& specs, nlohmann::ordered_json& files) {
  current_stage = "loading the model";
  Model model;
  std::string previous_weight;
  for (const std::string& spec : specs) {
    const std::size_t colon = spec.rfind(':');
    const std::string weight_path = colon == std::string::npos ? spec : spec.substr(0, colon);
    const std::string bias_path = colon == std::string::npos ? "" : spec.substr(colon + 1);
    if (weight_path.empty() || (colon != std::string::npos && bias_path.empty())) {
      throw InputError("--layer '" + spec + "' must be W.npy or W.npy:b.npy.");
    }

    const Array weight = read_array("--layer", weight_path);
    if (weight.shape.size() != 2 || weight.shape[0] < 1 || weight.shape[1] < 1) {
      throw InputError("--layer " + weight_path + " has shape " + shape_text(weight.shape) +
                       "; expected a 2-D weight matrix of shape (out, in).");
    }
    Layer layer;
    layer.out = weight.shape[0];
    layer.in = weight.shape[1];
    layer.weight = weight.values;
    require_finite("--layer " + weight_path, layer.weight, layer.in);

    if (!bias_path.empty()) {
      const Array bias = read_array("--layer", bias_path);
      const std::int64_t non_unit_dims = std::count_if(
          bias.shape.begin(), bias.shape.end(), [](std::int64_t dim) { return dim != 1; });
      if (static_cast<std::int64_t>(bias.values.size()) != layer.out || non_unit_dims > 1) {
        throw InputError("--layer bias " + bias_path + " has shape " + shape_text(bias.shape) +
                         "; expected a vector of length " + std::to_string(layer.out) +
                         " (the rows of " + weight_path + ").");
      }
      layer.bias = bias.values;
      require_finite("--layer bias " + bias_path, layer.bias, 1);
    }

    if (!model.layers.empty() && model.layers.back().out != layer.in) {
      throw InputError("--layer " + weight_path + " takes " + std::to_string(layer.in) +
                       " inputs but the previous --layer " + previous_weight + " has " +
                       std::to_string(model.layers.back().out) +
                       " outputs; consecutive layers must chain.");
    }
    files.push_back({{"weight", weight_path},
                     {"bias", bias_path.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(bias_path)}});
    model.layers.push_back(std::move(layer));
    previous_weight = weight_path;
  }
  mentioning("--layer", "", [&] { model.validate(); });
  return model;
}

/// Checks that `model` and the data fit, naming the files at fault, before the
/// engine sees them. For cross-entropy the classes are the model's outputs.
void check_fit(const Model& model, const std::string& model_source, LoadedData& loaded, Loss loss) {
  Dataset& data = loaded.data;
  if (model.input_dim() != data.d) {
    throw InputError(model_source + " takes " + std::to_string(model.input_dim()) +
                     " inputs but " + loaded.source + " has " + std::to_string(data.d) +
                     " features per sample.");
  }
  if (loss == Loss::squared) {
    if (model.output_dim() != data.k) {
      throw InputError(model_source + " has " + std::to_string(model.output_dim()) +
                       " outputs but " + loaded.target_source + " has " + std::to_string(data.k) +
                       " target columns.");
    }
    return;
  }
  for (std::size_t i = 0; i < data.labels.size(); ++i) {
    if (data.labels[i] < 0 || data.labels[i] >= model.output_dim()) {
      throw InputError(loaded.target_source + " has label " + std::to_string(data.labels[i]) +
                       " (sample " + std::to_string(i) + ") but " + model_source + " has " +
                       std::to_string(model.output_dim()) + " outputs, so labels must lie in [0, " +
                       std::to_string(model.output_dim()) + ").");
    }
  }
  // Classes absent from the data still have an output: K is the model's width.
  data.k = std::max(data.k, model.output_dim());
}

void check_combinations(const ProfileArgs& args) {
  if (!args.dataset.empty()) {
    if (!args.x_path.empty() || !args.y_path.empty()) {
      throw InputError("--dataset and --x/--y both give data; use one or the other.");
    }
    if (args.dataset != "fashion-mnist") {
      throw InputError("--dataset must be fashion-mnist, not '" + args.dataset +
                       "' (use --x and --y for your own data).");
    }
    if (args.split != "train" && args.split != "test") {
      throw InputError("--split must be train or test, not '" + args.split + "'.");
    }
    if (args.limit < 0) {
      throw InputError("--limit must be a positive number of samples (0 keeps them all).");
    }
  } else {
    if (args.x_path.empty() || args.y_path.empty()) {
      throw InputError("no data given: use --dataset fashion-mnist, or --x X.npy with --y Y.npy.");
    }
    if (args.split_option->count() > 0 || args.limit_option->count() > 0) {
      throw InputError("--split and --limit apply to --dataset only.");
    }
  }

  if (!args.layers.empty()) {
    for (const CLI::Option* option :
         {args.hidden_option, args.init_option, args.seed_option, args.no_bias_option}) {
      if (option->count() > 0) {
        throw InputError("--layer gives the model from files, so " + option->get_name() +
                         " (which builds one) cannot be used with it; give W.npy alone for a "
                         "layer without bias.");
      }
    }
  }
  if (args.init == "lstsq") {
    if (args.hidden_option->count() > 0) {
      throw InputError("--init lstsq fits the linear model only; drop --hidden or use --init "
                       "zeros or gaussian.");
    }
    if (args.loss != "mse") {
      throw InputError("--init lstsq is a least-squares fit and needs --loss mse.");
    }
  }
  if (args.curve_path.empty()) {
    if (args.curve_loss) throw InputError("--curve-loss adds columns to --curve; give --curve too.");
    if (args.batch_sizes_option->count() > 0 && args.tests_csv_path.empty()) {
      throw InputError("--batch-sizes chooses the rows of --curve (or --tests-csv); give one of them too.");
    }
  }
  if (args.chunk_rows < 1) throw InputError("--chunk-rows must be at least 1.");
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
  return values;
}

}  // namespace

CLI::App* add_profile_command(CLI::App& app, ProfileArgs& args) {
  CLI::App* command = app.add_subcommand(
      "profile", "Profile the gradient noise of a model on a data set, exactly.");
  command->add_option("--dataset", args.dataset, "Built-in data set: fashion-mnist");
  args.split_option =
      command->add_option("--split", args.split, "fashion-mnist split: train or test")
          ->capture_default_str();
  args.limit_option = command->add_option("--limit", args.limit,
                                          "Keep the first N samples of --dataset (0: all)");
  command->add_option("--x", args.x_path, "Inputs X, N x D (.npy or .csv)")
      ->type_name("FILE");
  command->add_option("--y", args.y_path,
                      "Targets: N x K reals (--loss mse) or N integer labels (--loss ce)")
      ->type_name("FILE");
  command->add_option("--loss", args.loss, "mse (squared) or ce (softmax cross-entropy)")
      ->capture_default_str();
  command->add_option("--layer", args.layers,
                      "A layer W.npy[:b.npy], input to output; repeat for deeper models. W is "
                      "out x in; b (length out) is optional")
      ->type_name("W[:b]");
  args.hidden_option = command->add_option(
      "--hidden", args.hidden, "Hidden widths of a built model, e.g. 128 or 256,64")
                             ->type_name("LIST");
  args.init_option =
      command->add_option("--init", args.init,
                          "Initial weights of a built model: zeros, gaussian or lstsq "
                          "(linear model, mse: the least-squares fit)")
          ->capture_default_str();
  args.seed_option =
      command->add_option("--seed", args.seed, "Seed of --init gaussian")
          ->check(non_negative_integer())
          ->capture_default_str();
  args.no_bias_option = command->add_flag("--no-bias", args.no_bias, "Build layers without bias");
  command->add_option("--device", args.device, "auto, cpu or cuda")->capture_default_str();
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
  command->add_option("--chunk-rows", args.chunk_rows, "Rows per streamed chunk")
      ->capture_default_str();
  command->add_option("--spectrum", args.spectrum,
                      "Top K eigenvalues of the gradient covariance Σ (model and per layer) and "
                      "of the Hessian, tr(Σ²), effective rank, B_noise")
      ->type_name("K");
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

int run_profile(const ProfileArgs& args) {
  current_stage = "checking the options";
  check_combinations(args);
  const Loss loss = parse_loss(args.loss);
  ProfileOptions options;
  options.loss = loss;
  options.device = mentioning("--device", args.device, [&] { return parse_device(args.device); });
  options.chunk_rows = args.chunk_rows;
  options.param_stats = !args.param_stats_path.empty();
  const Init init = mentioning("--init", args.init, [&] { return parse_init(args.init); });
  const std::vector<std::int64_t> hidden =
      args.hidden.empty() ? std::vector<std::int64_t>{} : parse_hidden(args.hidden);

  OutputSet outputs;
  if (!args.out_path.empty()) outputs.add_text("--out", args.out_path);
  if (!args.curve_path.empty()) outputs.add_text("--curve", args.curve_path);
  if (!args.param_stats_path.empty()) outputs.add_npy("--param-stats", args.param_stats_path);
  if (!args.spectrum_csv_path.empty()) outputs.add_text("--spectrum-csv", args.spectrum_csv_path);
  if (!args.tests_csv_path.empty()) outputs.add_text("--tests-csv", args.tests_csv_path);
  const std::vector<std::int64_t> estimator_spec =
      args.estimators.empty() ? std::vector<std::int64_t>{} : parse_estimators(args.estimators);
  // Batch tests need the per-parameter variances (for the GSNR).
  options.param_stats = options.param_stats || args.theta > 0;
  outputs.check_writable_all();

  LoadedData loaded = load_data(args, loss);

  // The model: from --layer files, or built for the data.
  current_stage = "building the model";
  Model model;
  nlohmann::ordered_json model_description;
  std::string model_source;
  if (!args.layers.empty()) {
    nlohmann::ordered_json files = nlohmann::ordered_json::array();
    model = load_layers(args.layers, files);
    model_description = model_json(model);
    model_description["init"] = "files";
    model_description["files"] = files;
    model_source = model.num_layers() == 1 ? "--layer " + files[0]["weight"].get<std::string>()
                                           : "the --layer model";
  } else {
    std::vector<std::int64_t> widths{loaded.data.d};
    widths.insert(widths.end(), hidden.begin(), hidden.end());
    widths.push_back(loaded.data.k);
    if (init == Init::lstsq) {
      model = mentioning("--init", "lstsq", [&] { return fit_least_squares(loaded.data, !args.no_bias); });
    } else {
      model = make_model(widths, !args.no_bias, init, args.seed);
    }
    model_description = model_json(model);
    model_description["init"] = args.init;
    if (init == Init::gaussian) model_description["seed"] = args.seed;
    model_source = "the model";
  }
  check_fit(model, model_source, loaded, loss);

  std::vector<std::int64_t> batch_sizes;
  if (!args.curve_path.empty() || !args.tests_csv_path.empty()) {
    batch_sizes = mentioning("--batch-sizes", args.batch_sizes,
                             [&] { return parse_batch_sizes(args.batch_sizes, loaded.data.n); });
  }

  current_stage = "profiling";
  const Profile result = profile(model, loaded.data, options);

  ShapeResults shape;
  if (args.spectrum > 0) {
    current_stage = "finding the covariance spectrum";
    SpectrumOptions spectrum_options;
    spectrum_options.k = std::min(args.spectrum, model.num_params());
    spectrum_options.chunk_rows = args.chunk_rows;
    spectrum_options.keep_vectors = false;
    spectrum_options.exact_trace_sq = args.exact_trace_sq;
    shape.spectrum = covariance_spectrum(model, loaded.data, loss, result, spectrum_options);
    shape.spectrum_device = "cpu";
    if (result.device != "cpu") {
      // The model's top eigenpairs on the GPU that profiled it; the rest stays on the CPU.
      EigenOptions eigen;
      eigen.k = spectrum_options.k;
      eigen.block = spectrum_options.k / 2 + 2;
      const EigenResult gpu = top_eigenpairs(
          model.num_params(),
          covariance_operator_cuda(model, loaded.data, loss, result.param_mean), eigen);
      shape.spectrum->top_eigenvalues = gpu.values;
      shape.spectrum->residuals = gpu.residuals;
      shape.spectrum->passes = gpu.passes;
      shape.spectrum->converged = gpu.converged;
      shape.spectrum_device = result.device;
    }
    current_stage = "analysing the curvature";
    CurvatureOptions curvature_options;
    curvature_options.k = std::min(args.spectrum, model.num_params());
    curvature_options.gauss_newton = args.hessian == "gn";
    curvature_options.chunk_rows = args.chunk_rows;
    std::optional<double> trace_sq;
    if (shape.spectrum->trace_cov_sq_exact) trace_sq = shape.spectrum->trace_cov_sq;
    ExternalOperator hessian;
    if (result.device != "cpu") {
      // Hessian-vector products (eigensolver, GᵀHG, dense H) on the GPU that profiled.
      hessian.apply = hessian_operator_cuda(model, loaded.data, loss, curvature_options.gauss_newton);
      hessian.device = result.device;
    }
    shape.curvature =
        curvature(model, loaded.data, loss, result, curvature_options, trace_sq, hessian);
  }
  if (args.theta > 0) {
    current_stage = "running the batch-size tests";
    const std::vector<std::int64_t> test_sizes =
        batch_sizes.empty() ? parse_batch_sizes("pow2", loaded.data.n) : batch_sizes;
    ExternalOperator covariance;
    if (result.device != "cpu") {
      // ĜᵀΣĜ = Ĝᵀ(ΣĜ) from one Σ product on the GPU that profiled.
      covariance.apply = covariance_operator_cuda(model, loaded.data, loss, result.param_mean);
      covariance.device = result.device;
    }
    shape.tests = batch_tests(model, loaded.data, loss, result, args.theta, test_sizes,
                              args.chunk_rows, covariance);
  }
  if (!estimator_spec.empty()) {
    current_stage = "sampling minibatch pairs for the estimators";
    shape.estimators = mentioning("--estimators", args.estimators, [&] {
      return two_batch_estimators(model, loaded.data, loss, result, estimator_spec[0],
                                  estimator_spec[1], estimator_spec[2], args.seed, args.chunk_rows);
    });
  }

  current_stage = "preparing the outputs";
  ReportContext context;
  context.loss = loss;
  context.model = model_description;
  context.data = loaded.description;
  context.options = {{"device_requested", args.device},
                     {"chunk_rows", args.chunk_rows},
                     {"param_stats", options.param_stats},
                     {"spectrum", args.spectrum},
                     {"hessian", args.hessian},
                     {"theta", args.theta},
                     {"estimators", args.estimators}};
  if (!args.out_path.empty()) {
    nlohmann::ordered_json report = report_json(result, context);
    add_shape_json(report, shape);
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
  outputs.commit();

  std::cout << summary_text(result, context) << shape_summary_text(shape);
  for (const std::string& path : {args.out_path, args.curve_path, args.param_stats_path,
                                  args.spectrum_csv_path, args.tests_csv_path}) {
    if (!path.empty()) std::cout << "wrote " << path << "\n";
  }
  std::cout.flush();
  for (const std::string& warning : profile_warnings(result)) {
    std::cerr << "gradnoise: warning: " << warning << "\n";
  }
  return 0;
}

}  // namespace gradnoise::cli
