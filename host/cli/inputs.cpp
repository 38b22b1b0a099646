// The data and model options shared by the commands (see inputs.hpp).
#include "cli/inputs.hpp"

#include <unistd.h>

#include <cstdio>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "cli/cli.hpp"
#include "parallel_scan.hpp"
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
  const std::int64_t index =
      detail::first_non_finite(values.data(), static_cast<std::int64_t>(values.size()));
  if (index >= 0) {
    const std::string where =
        cols > 1 ? "row " + std::to_string(index / cols) + ", column " + std::to_string(index % cols)
                 : "entry " + std::to_string(index);
    throw InputError(what + " holds a non-finite value (" +
                     std::to_string(values[static_cast<std::size_t>(index)]) + ") at " + where +
                     "; every value must be finite.");
  }
}

/// --layer W.npy[:b.npy]: the weight file and the bias file ("" when none).
std::pair<std::string, std::string> layer_files(const std::string& spec) {
  const std::size_t colon = spec.rfind(':');
  if (colon == std::string::npos) return {spec, ""};
  return {spec.substr(0, colon), spec.substr(colon + 1)};
}

/// --layer W.npy[:b.npy], input to output.
Model load_layers(const std::vector<std::string>& specs, nlohmann::ordered_json& files) {
  set_current_stage("loading the model");
  Model model;
  std::string previous_weight;
  for (const std::string& spec : specs) {
    const auto [weight_path, bias_path] = layer_files(spec);
    if (weight_path.empty() || (spec.find(':') != std::string::npos && bias_path.empty())) {
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

}  // namespace

std::vector<InputFile> input_files(const DataModelArgs& args) {
  std::vector<InputFile> files;
  if (!args.x_path.empty()) files.push_back({"--x", args.x_path});
  if (!args.y_path.empty()) files.push_back({"--y", args.y_path});
  for (const std::string& spec : args.layers) {
    const auto [weight_path, bias_path] = layer_files(spec);
    if (!weight_path.empty()) files.push_back({"--layer", weight_path});
    if (!bias_path.empty()) files.push_back({"--layer", bias_path});
  }
  if (!args.dataset.empty()) {
    // Whichever of its files the loader picks (.gz or plain), all count.
    std::error_code error;
    for (std::filesystem::directory_iterator entry(fashion_mnist_dir(), error), end;
         !error && entry != end; entry.increment(error)) {
      std::error_code not_a_file;  // a dangling link in the folder is no input
      if (entry->is_regular_file(not_a_file)) files.push_back({"--dataset", entry->path().string()});
    }
  }
  return files;
}

Device parse_device(const std::string& name) {
  if (const std::optional<Device> device = device_named(name)) return *device;
  throw InputError("--device '" + name + "' is not known; expected auto, cpu or cuda");
}

GpuDtype parse_gpu_dtype(const std::string& name) {
  if (const std::optional<GpuDtype> dtype = gpu_dtype_named(name)) return *dtype;
  throw InputError("--gpu-dtype '" + name + "' is not known; expected float32 or float64");
}

Init parse_init(const std::string& name) {
  if (name == "zeros") return Init::zeros;
  if (name == "gaussian") return Init::gaussian;
  if (name == "lstsq") return Init::lstsq;
  throw InputError("--init '" + name + "' is not known; expected zeros, gaussian or lstsq");
}

Sampling parse_sampling(const std::string& name) {
  if (const std::optional<Sampling> sampling = sampling_named(name)) return *sampling;
  throw InputError("--sampling must be with (replacement), without (random reshuffling) or fixed "
                   "(the data in order), not '" + name + "'.");
}

CsvHeader parse_csv_header(const std::string& name) {
  if (name == "auto") return CsvHeader::automatic;
  if (name == "yes") return CsvHeader::present;
  if (name == "no") return CsvHeader::absent;
  throw InputError("--csv-header '" + name + "' is not known; expected auto, yes or no");
}

std::string loss_choices() {
  std::string text;
  for (Loss loss : all_losses()) {
    text += (text.empty() ? "" : ", ") + loss_name(loss) + " (" + loss_summary(loss) + ")";
  }
  return text;
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



namespace {

/// At least two samples (the loaders checked every value and label).
void check_loaded(LoadedData& loaded) {
  detail::StoredData& data = loaded.data;
  if (loaded.whole_rows == 0) loaded.whole_rows = data.n;
  if (loaded.whole_rows < 2) {
    throw InputError(loaded.source + " holds " + std::to_string(loaded.whole_rows) +
                     (loaded.whole_rows == 1 ? " sample" : " samples") +
                     "; at least 2 are needed for a gradient covariance.");
  }
  loaded.description["n"] = loaded.whole_rows;
  loaded.description["d"] = data.d;
  loaded.description["k"] = data.k;
}

}  // namespace

LoadedData load_xy_files(const std::string& x_flag, const std::string& x_path,
                         const std::string& y_flag, const std::string& y_path, Loss loss,
                         CsvHeader csv_header, int part, int parts) {
  LoadedData loaded;
  try {
    // Finite values and labels in range are checked as the rows load.
    detail::StoredDataPart rows = detail::load_xy_stored(x_path, y_path, loss, csv_header, part, parts);
    loaded.data = std::move(rows.data);
    loaded.first_row = rows.first_row;
    loaded.whole_rows = rows.whole_rows;
  } catch (const InputError& error) {
    // load_xy names the file at fault; say which flags gave it if it did not.
    const std::string message = error.what();
    if (message.find(x_path) != std::string::npos || message.find(y_path) != std::string::npos) {
      throw;
    }
    throw InputError(x_flag + " " + x_path + ", " + y_flag + " " + y_path + ": " + message);
  }
  loaded.source = x_flag + " " + x_path;
  loaded.target_source = y_flag + " " + y_path;
  loaded.description = {{"source", "files"},
                        {"x", x_path},
                        {"y", y_path},
                        {"description", x_path + ", " + y_path}};
  check_loaded(loaded);
  return loaded;
}

LoadedData load_data(const DataModelArgs& args, Loss loss, int part, int parts) {
  set_current_stage("loading the data");
  if (args.dataset.empty()) {
    return load_xy_files("--x", args.x_path, "--y", args.y_path, loss,
                         parse_csv_header(args.csv_header), part, parts);
  }
  LoadedData loaded;
  const std::filesystem::path dir = fashion_mnist_dir();
  DatasetPart rows = mentioning("--dataset", args.dataset, [&] {
    return load_fashion_mnist_part(dir, args.split, loss, args.limit, part, parts);
  });
  loaded.source = "--dataset " + args.dataset;
  if (args.limit > 0) loaded.source += " --limit " + std::to_string(args.limit);
  loaded.target_source = loaded.source;
  require_finite(loaded.source, rows.data.x, rows.data.d);
  require_finite(loaded.target_source, rows.data.y, rows.data.k);
  mentioning(loaded.source, "", [&] { rows.data.validate(loaded.source.c_str()); });
  loaded.data = detail::StoredData::from(std::move(rows.data));
  loaded.first_row = rows.first_row;
  loaded.whole_rows = rows.whole_rows;
  std::string description = "fashion-mnist " + args.split;
  if (args.limit > 0) description += " (first " + std::to_string(args.limit) + ")";
  loaded.description = {{"source", "fashion-mnist"}, {"split", args.split},
                        {"limit", args.limit},      {"dir", dir.string()},
                        {"description", description}};
  check_loaded(loaded);
  return loaded;
}

/// Checks that `model` and the data fit, naming the files at fault, before the
/// engine sees them. For cross-entropy the classes are the model's outputs.
void check_fit(const Model& model, const std::string& model_source, LoadedData& loaded, Loss loss) {
  detail::StoredData& data = loaded.data;
  if (model.input_dim() != data.d) {
    throw InputError(model_source + " takes " + std::to_string(model.input_dim()) +
                     " inputs but " + loaded.source + " has " + std::to_string(data.d) +
                     " features per sample.");
  }
  if (loss_targets(loss) == TargetKind::real) {
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


double physical_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  return pages > 0 && page > 0 ? static_cast<double>(pages) * static_cast<double>(page) : 0.0;
}

std::string gib(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GiB", bytes / (1024.0 * 1024.0 * 1024.0));
  return text;
}

void check_memory(double bytes, const std::string& what) {
  const double memory = physical_memory_bytes();
  if (memory > 0 && bytes > 0.8 * memory) {
    throw InputError(what + ", about " + gib(bytes) + " of float64 state, more than this machine's " +
                     gib(memory) + " of memory can hold.");
  }
}

namespace {

/// Bytes a profile of a model with `params` parameters keeps: θ, the running
/// mean and M2, the per-parameter variance and products, per-thread copies.
double model_state_bytes(double params) { return 8.0 * 8.0 * params; }

/// The classes of a built model are the largest label + 1, so one stray huge
/// label would make an enormous model: refuse more classes than
/// max(2N, 1024) unless --layer files fix the number of outputs.
void check_class_count(const LoadedData& loaded) {
  const std::int64_t k = loaded.data.k, n = loaded.whole_rows;
  if (k > std::max<std::int64_t>(2 * n, 1024)) {
    throw InputError(loaded.target_source + " has label " + std::to_string(k - 1) +
                     ", which would make " + std::to_string(k) + " classes for " +
                     std::to_string(n) + " samples; labels must be class indices 0..K-1 "
                     "(a model given by --layer files fixes K).");
  }
}

}  // namespace

BuiltModel load_model(const DataModelArgs& args, LoadedData& loaded, Loss loss) {
  set_current_stage("building the model");
  BuiltModel built;
  if (!args.layers.empty()) {
    nlohmann::ordered_json files = nlohmann::ordered_json::array();
    built.model = load_layers(args.layers, files);
    built.description = model_json(built.model);
    built.description["init"] = "files";
    built.description["files"] = files;
    built.source = built.model.num_layers() == 1
                       ? "--layer " + files[0]["weight"].get<std::string>()
                       : "the --layer model";
  } else {
    const Init init = mentioning("--init", args.init, [&] { return parse_init(args.init); });
    const std::vector<std::int64_t> hidden =
        args.hidden.empty() ? std::vector<std::int64_t>{} : parse_hidden(args.hidden);
    if (loss_targets(loss) == TargetKind::labels) check_class_count(loaded);
    std::vector<std::int64_t> widths{loaded.data.d};
    widths.insert(widths.end(), hidden.begin(), hidden.end());
    widths.push_back(loaded.data.k);
    double params = 0;
    for (std::size_t l = 0; l + 1 < widths.size(); ++l) {
      params += static_cast<double>(widths[l + 1]) * static_cast<double>(widths[l] + 1);
    }
    char count[32];
    std::snprintf(count, sizeof count, "%.3g", params);
    check_memory(model_state_bytes(params),
                 (hidden.empty() ? std::string("the model") : "--hidden " + args.hidden) +
                     " makes a model of " + count + " parameters");
    if (init == Init::lstsq) {
      built.model = mentioning("--init", "lstsq",
                               [&] { return fit_least_squares(loaded.data, !args.no_bias); });
    } else {
      built.model = make_model(widths, !args.no_bias, init, args.seed);
    }
    built.description = model_json(built.model);
    built.description["init"] = args.init;
    if (init == Init::gaussian) built.description["seed"] = args.seed;
    built.source = "the model";
  }
  check_fit(built.model, built.source, loaded, loss);
  return built;
}

void add_data_model_options(CLI::App* command, DataModelArgs& args, const std::string& seed_help) {
  command->add_option("--dataset", args.dataset, "Built-in data set: fashion-mnist");
  args.split_option =
      command->add_option("--split", args.split, "fashion-mnist split: train or test")
          ->capture_default_str();
  args.limit_option = command->add_option("--limit", args.limit,
                                          "Keep the first N samples of --dataset (0: all)");
  command->add_option("--x", args.x_path, "Inputs X, N x D (.npy or .csv)")
      ->type_name("FILE");
  command->add_option("--y", args.y_path,
                      "Targets: N x K reals (--loss mse), N x K reals in [0, 1] (--loss bce) or N integer "
                      "labels (--loss ce)")
      ->type_name("FILE");
  command->add_option("--csv-header", args.csv_header,
                      "Is the first line of a .csv data file a header? auto (yes when a field "
                      "is a word, not a number), yes (always: skip it) or no (never: it is data)")
      ->capture_default_str();
  command->add_option("--loss", args.loss, loss_choices())
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
  args.seed_option = command->add_option("--seed", args.seed, seed_help)
                         ->check(non_negative_integer())
                         ->capture_default_str();
  args.no_bias_option = command->add_flag("--no-bias", args.no_bias, "Build layers without bias");
}

void check_data_model_combinations(const DataModelArgs& args, bool seed_also_samples) {
  parse_csv_header(args.csv_header);  // a bad name fails before any file is read
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
    if (args.x_path.empty() != args.y_path.empty()) {
      throw InputError(args.x_path.empty() ? "--y is given without --x: the inputs X are needed too."
                                           : "--x is given without --y: the targets Y are needed too.");
    }
    if (args.x_path.empty()) {
      throw InputError("no data given: use --dataset fashion-mnist, or --x X.npy with --y Y.npy.");
    }
    if (args.split_option->count() > 0 || args.limit_option->count() > 0) {
      throw InputError("--split and --limit apply to --dataset only.");
    }
  }

  if (!args.layers.empty()) {
    for (const CLI::Option* option :
         {args.hidden_option, args.init_option, args.seed_option, args.no_bias_option}) {
      if (option == args.seed_option && seed_also_samples) continue;
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
}

}  // namespace gradnoise::cli
