// The data and model options that several commands share (profile, sweep):
// --dataset/--split/--limit or --x/--y (and --csv-header), --loss, and
// --layer files or a built model (--hidden, --init, --seed, --no-bias).
// Every message names the flag or the file at fault.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "gradnoise/data.hpp"
#include "gradnoise/io.hpp"
#include "gradnoise/model.hpp"
#include "gradnoise/profile.hpp"
#include "gradnoise/sweep.hpp"
#include "stored_data.hpp"

namespace gradnoise::cli {

struct DataModelArgs {
  std::string dataset;
  std::string split = "train";
  std::int64_t limit = 0;
  std::string x_path;
  std::string y_path;
  std::string csv_header = "auto";  // auto, yes or no: is a .csv data file's first line a header
  std::string loss = "mse";
  std::vector<std::string> layers;
  std::string hidden;
  std::string init = "gaussian";
  std::uint64_t seed = 0;
  bool no_bias = false;
  // Which options were given explicitly (CLI11 fills these in).
  CLI::Option* split_option = nullptr;
  CLI::Option* limit_option = nullptr;
  CLI::Option* hidden_option = nullptr;
  CLI::Option* init_option = nullptr;
  CLI::Option* seed_option = nullptr;
  CLI::Option* no_bias_option = nullptr;
};

/// Registers the shared options on `command`; `seed_help` says what --seed
/// seeds for this command.
void add_data_model_options(CLI::App* command, DataModelArgs& args, const std::string& seed_help);

/// Throws InputError for combinations of the shared options that cannot work.
/// `seed_also_samples`: --seed seeds more than the built model, so it may go
/// with --layer files.
void check_data_model_combinations(const DataModelArgs& args, bool seed_also_samples);

/// A file a command reads, named by the option that gave it.
struct InputFile {
  std::string flag;  // "--x", "--layer", "--dataset", ...
  std::string path;
};

/// Every file the shared options make the command read: --x, --y, each
/// --layer's W and b, and for --dataset every file in its directory (the
/// directory itself is not an input). For the check that no output is one.
std::vector<InputFile> input_files(const DataModelArgs& args);

/// The CLI's names of the library's enums; each throws InputError naming the
/// flag and the valid names.
Device parse_device(const std::string& name);
/// float32 or float64.
GpuDtype parse_gpu_dtype(const std::string& name);
Init parse_init(const std::string& name);
Sampling parse_sampling(const std::string& name);
CsvHeader parse_csv_header(const std::string& name);

/// Throws InputError "<what>, about X GiB …" when `bytes` exceed 80% of this
/// machine's physical memory: refuse before allocating, not die in the attempt.
void check_memory(double bytes, const std::string& what);

/// "mse (squared error), ce (...), bce (...)": --loss's help, from the registry.
std::string loss_choices();

std::vector<std::int64_t> parse_hidden(const std::string& spec);

struct LoadedData {
  /// X where the loader left it (a memory-mapped .npy file, float32 or
  /// float64), targets in memory: what the engines read.
  detail::StoredData data;
  nlohmann::ordered_json description;
  std::string source;  // names the data in messages: "--x X.npy" or "--dataset fashion-mnist"
  std::string target_source;
  /// Where `data` sits in the whole set: all of it, or an MPI rank's rows
  /// (docs/MPI.md); for labels data.k is then the part's largest label + 1.
  std::int64_t first_row = 0;
  std::int64_t whole_rows = 0;
};

/// --dataset or --x/--y, checked: at least two samples, finite values, labels ≥ 0.
/// With `parts` > 1, only the rows of part `part` (split_rows) are read.
LoadedData load_data(const DataModelArgs& args, Loss loss, int part = 0, int parts = 1);

/// A data set from files, checked like load_data; `x_flag`/`y_flag` name the
/// options in messages; `csv_header` says how to read .csv files (--csv-header).
LoadedData load_xy_files(const std::string& x_flag, const std::string& x_path,
                         const std::string& y_flag, const std::string& y_path, Loss loss,
                         CsvHeader csv_header, int part = 0, int parts = 1);

struct BuiltModel {
  Model model;
  nlohmann::ordered_json description;
  std::string source;  // names the model in messages
};

/// The model from --layer files, or built for the data ({D, hidden..., K}),
/// checked against the data (classes absent from the data still get an
/// output: data.k becomes the model's width for cross-entropy).
BuiltModel load_model(const DataModelArgs& args, LoadedData& loaded, Loss loss);

/// Throws InputError unless `model` takes the data's inputs and gives its
/// targets or labels; widens data.k to the model's outputs for labels.
void check_fit(const Model& model, const std::string& model_source, LoadedData& loaded, Loss loss);

}  // namespace gradnoise::cli
