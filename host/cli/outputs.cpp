// All-or-nothing outputs and error messages that name the culprit.
#include <unistd.h>

#include <system_error>

#include "cli/cli.hpp"
#include "gradnoise/io.hpp"

namespace gradnoise::cli {

const char* current_stage = "starting";

std::string mention(const std::string& flag, const std::string& value,
                    const std::string& message) {
  if (!flag.empty() && message.find(flag) != std::string::npos) return message;
  if (!value.empty() && message.find(value) != std::string::npos) return message;
  std::string prefix = flag;
  if (!value.empty()) prefix += (prefix.empty() ? "" : " ") + value;
  return prefix + ": " + message;
}

namespace {

/// A hidden temp name beside `path`, unique to this process.
std::filesystem::path staging_path(const std::filesystem::path& path) {
  std::filesystem::path temp = path;
  temp.replace_filename("." + path.filename().string() + ".gradnoise-" +
                        std::to_string(::getpid()) + ".part");
  return temp;
}

std::filesystem::path normalised(const std::filesystem::path& path) {
  std::error_code error;
  std::filesystem::path absolute = std::filesystem::absolute(path, error);
  return (error ? path : absolute).lexically_normal();
}

}  // namespace

void OutputSet::add_text(std::string flag, std::filesystem::path path) {
  Output output;
  output.flag = std::move(flag);
  output.path = std::move(path);
  outputs_.push_back(std::move(output));
}

void OutputSet::add_npy(std::string flag, std::filesystem::path path) {
  Output output;
  output.flag = std::move(flag);
  output.path = std::move(path);
  output.is_npy = true;
  outputs_.push_back(std::move(output));
}

void OutputSet::check_writable_all() const {
  for (std::size_t i = 0; i < outputs_.size(); ++i) {
    const Output& output = outputs_[i];
    for (std::size_t j = 0; j < i; ++j) {
      if (normalised(outputs_[j].path) == normalised(output.path)) {
        throw InputError(outputs_[j].flag + " and " + output.flag + " both name " +
                         output.path.string() + "; give each output its own file.");
      }
    }
    std::error_code error;
    if (std::filesystem::is_directory(output.path, error)) {
      throw InputError(output.flag + " " + output.path.string() +
                       " is a directory; expected the path of a file to write.");
    }
    mentioning(output.flag, output.path.string(), [&] { check_writable(output.path); });
  }
}

OutputSet::Output& OutputSet::find(const std::filesystem::path& path) {
  for (Output& output : outputs_) {
    if (output.path == path) return output;
  }
  throw std::logic_error("output " + path.string() + " was never registered");
}

void OutputSet::set_text(const std::filesystem::path& path, std::string contents) {
  Output& output = find(path);
  output.text = std::move(contents);
  output.ready = true;
}

void OutputSet::set_npy(const std::filesystem::path& path, std::vector<std::int64_t> shape,
                        std::vector<double> values) {
  Output& output = find(path);
  output.shape = std::move(shape);
  output.values = std::move(values);
  output.ready = true;
}

void OutputSet::commit() {
  current_stage = "writing the outputs";
  std::vector<std::filesystem::path> staged;
  std::vector<std::filesystem::path> placed;
  auto remove_all = [&] {
    std::error_code ignored;
    for (const auto& path : staged) std::filesystem::remove(path, ignored);
    for (const auto& path : placed) std::filesystem::remove(path, ignored);
  };
  const Output* current = nullptr;
  try {
    // Stage every file first: most failures (disk full, permissions) happen here.
    for (const Output& output : outputs_) {
      if (!output.ready) throw std::logic_error("output " + output.path.string() + " has no contents");
      current = &output;
      const std::filesystem::path temp = staging_path(output.path);
      staged.push_back(temp);
      if (output.is_npy) {
        write_npy(temp, output.shape, output.values);
      } else {
        write_file_atomic(temp, output.text);
      }
    }
    // Then rename them all into place.
    for (std::size_t i = 0; i < outputs_.size(); ++i) {
      current = &outputs_[i];
      std::filesystem::rename(staged[i], outputs_[i].path);
      placed.push_back(outputs_[i].path);
    }
  } catch (const std::bad_alloc&) {
    remove_all();
    throw;
  } catch (const std::exception& error) {
    remove_all();
    const std::string what = current ? current->flag + " " + current->path.string() : "an output";
    throw RuntimeError("cannot write " + what + " (" + error.what() +
                       "); no output files were written.");
  }
}

}  // namespace gradnoise::cli
