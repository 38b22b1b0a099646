// All-or-nothing outputs and error messages that name the culprit.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <iostream>
#include <optional>
#include <system_error>

#include "cli/cli.hpp"
#include "gradnoise/io.hpp"

namespace gradnoise::cli {

namespace {
thread_local const char* stage_now = "starting";
}  // namespace

void set_current_stage(const char* stage) { stage_now = stage; }
const char* current_stage() { return stage_now; }

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

bool is_stdout(const std::filesystem::path& path) { return path == "-"; }

/// `path` as messages show it.
std::string shown(const std::filesystem::path& path) {
  return is_stdout(path) ? "- (stdout)" : path.string();
}

/// Which file a path is: its device and inode, or for a file not yet there,
/// its directory's device and inode and its name. Equal ids are one file
/// however they are spelt (./x, a/../x, a symlink, a hard link).
struct FileId {
  dev_t device = 0;
  ino_t inode = 0;
  std::string name;  // only for a file yet to be created
  bool operator==(const FileId&) const = default;
};

std::optional<FileId> existing_id(const std::filesystem::path& path) {
  struct stat info {};
  if (::stat(path.c_str(), &info) != 0) return std::nullopt;
  return FileId{info.st_dev, info.st_ino, {}};
}

std::optional<FileId> stdout_id() {
  struct stat info {};
  if (::fstat(STDOUT_FILENO, &info) != 0) return std::nullopt;
  return FileId{info.st_dev, info.st_ino, {}};
}

/// The file an output will be; none when its path cannot be resolved
/// (check_writable then says why).
std::optional<FileId> output_id(const std::filesystem::path& path) {
  if (is_stdout(path)) return stdout_id();
  if (std::optional<FileId> id = existing_id(path)) return id;
  try {
    const std::filesystem::path target = output_target(path).path;
    const std::filesystem::path directory = target.parent_path();
    std::optional<FileId> id = existing_id(directory.empty() ? "." : directory);
    if (id) id->name = target.filename().string();
    return id;
  } catch (const RuntimeError&) {
    return std::nullopt;
  }
}

/// Ignores SIGPIPE while it lives, so a pipe or FIFO whose reader has gone
/// fails the write with EPIPE, and the staged files are removed, instead of
/// killing the process with them left behind.
class SigpipeIgnored {
 public:
  SigpipeIgnored() {
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    ::sigemptyset(&ignore.sa_mask);
    ::sigaction(SIGPIPE, &ignore, &previous_);
  }
  SigpipeIgnored(const SigpipeIgnored&) = delete;
  SigpipeIgnored& operator=(const SigpipeIgnored&) = delete;
  ~SigpipeIgnored() { ::sigaction(SIGPIPE, &previous_, nullptr); }

 private:
  struct sigaction previous_ {};
};

}  // namespace

void OutputSet::add(std::string flag, std::filesystem::path path, bool is_npy, bool external) {
  Output output;
  output.flag = std::move(flag);
  output.path = std::move(path);
  output.is_npy = is_npy;
  output.external = external;
  outputs_.push_back(std::move(output));
}

void OutputSet::add_text(std::string flag, std::filesystem::path path) {
  add(std::move(flag), std::move(path), /*is_npy=*/false, /*external=*/false);
}

void OutputSet::add_npy(std::string flag, std::filesystem::path path) {
  add(std::move(flag), std::move(path), /*is_npy=*/true, /*external=*/false);
}

void OutputSet::add_external(std::string flag, std::filesystem::path path) {
  add(std::move(flag), std::move(path), /*is_npy=*/false, /*external=*/true);
}

void OutputSet::add_inputs(const std::vector<InputFile>& files) {
  inputs_.insert(inputs_.end(), files.begin(), files.end());
}

bool OutputSet::writes_stdout() const {
  return std::any_of(outputs_.begin(), outputs_.end(), [](const Output& output) {
    return !output.external && is_stdout(output.path);
  });
}

void OutputSet::check_writable_all() const {
  // Refusals first (usage errors, exit 2), then the probes (exit 1).
  std::vector<std::optional<FileId>> input_ids;
  for (const InputFile& input : inputs_) input_ids.push_back(existing_id(input.path));
  std::vector<std::optional<FileId>> ids;
  for (std::size_t i = 0; i < outputs_.size(); ++i) {
    const Output& output = outputs_[i];
    if (is_stdout(output.path) && (output.is_npy || output.external)) {
      throw InputError(output.flag + " - would send a binary file to stdout; only text outputs "
                       "take - (give ./- for a file named -).");
    }
    const std::optional<FileId> id = output_id(output.path);
    for (std::size_t j = 0; j < i; ++j) {
      const Output& other = outputs_[j];
      const bool both_stdout = is_stdout(other.path) && is_stdout(output.path);
      if (!both_stdout && !(id && ids[j] && *id == *ids[j])) continue;
      if (other.path == output.path) {
        throw InputError(other.flag + " and " + output.flag + " both name " + shown(output.path) +
                         "; give each output its own file.");
      }
      throw InputError(other.flag + " " + shown(other.path) + " and " + output.flag + " " +
                       shown(output.path) + " are the same file; give each output its own file.");
    }
    for (std::size_t k = 0; id && k < inputs_.size(); ++k) {
      if (input_ids[k] && *input_ids[k] == *id) {
        throw InputError(output.flag + " " + shown(output.path) + " is the file " +
                         inputs_[k].flag + " " + inputs_[k].path +
                         " reads; give the output another path so the input is not overwritten.");
      }
    }
    ids.push_back(id);
    std::error_code error;
    if (!is_stdout(output.path) && std::filesystem::is_directory(output.path, error)) {
      throw InputError(output.flag + " " + output.path.string() +
                       " is a directory; expected the path of a file to write.");
    }
  }
  for (const Output& output : outputs_) {
    if (is_stdout(output.path)) continue;
    mentioning(output.flag, output.path.string(), [&] { check_writable(output.path); });
  }
}

OutputSet::Output& OutputSet::find(const std::filesystem::path& path) {
  for (Output& output : outputs_) {
    if (output.path == path && !output.external) return output;
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
  set_current_stage("writing the outputs");
  struct Staged {
    const Output* output;
    std::filesystem::path temp;
    std::filesystem::path target;  // the path with its symlinks followed
  };
  std::vector<Staged> staged;
  std::vector<const Output*> direct;  // stdout, character devices, FIFOs
  std::vector<std::filesystem::path> placed;
  std::string sent;  // the direct outputs already written, for the message
  auto remove_all = [&] {
    std::error_code ignored;
    for (const Staged& file : staged) std::filesystem::remove(file.temp, ignored);
    for (const auto& path : placed) std::filesystem::remove(path, ignored);
  };
  auto write = [](const Output& output, const std::filesystem::path& path) {
    if (output.is_npy) {
      write_npy(path, output.shape, output.values);
    } else {
      write_file_atomic(path, output.text);
    }
  };
  const Output* current = nullptr;
  try {
    // Stage every regular file first: most failures (disk full, permissions)
    // happen here, and a file that is staged can still be taken back.
    for (const Output& output : outputs_) {
      if (output.external) continue;
      if (!output.ready) throw std::logic_error("output " + output.path.string() + " has no contents");
      current = &output;
      if (is_stdout(output.path)) {
        direct.push_back(&output);
        continue;
      }
      const OutputTarget target = output_target(output.path);
      if (target.in_place) {
        direct.push_back(&output);
        continue;
      }
      staged.push_back({&output, staging_path(target.path), target.path});
      write(output, staged.back().temp);
    }
    // Then what cannot be staged, before any regular file is placed.
    {
      const SigpipeIgnored sigpipe_ignored;
      for (const Output* output : direct) {
        current = output;
        if (is_stdout(output->path)) {
          std::cout.write(output->text.data(), static_cast<std::streamsize>(output->text.size()));
          std::cout.flush();
          if (!std::cout) throw RuntimeError(std::string("writing to stdout failed (") +
                                             std::strerror(errno) + ")");
        } else {
          write(*output, output->path);
        }
        sent += (sent.empty() ? "" : ", ") + output->flag + " " + output->path.string();
      }
    }
    // Then rename the staged files over their targets (not over a symlink).
    for (const Staged& file : staged) {
      current = file.output;
      std::filesystem::rename(file.temp, file.target);
      placed.push_back(file.target);
    }
  } catch (const std::bad_alloc&) {
    remove_all();
    throw;
  } catch (const std::exception& error) {
    remove_all();
    const std::string what = current ? current->flag + " " + current->path.string() : "an output";
    throw RuntimeError("cannot write " + what + " (" + error.what() +
                       "); no output files were written" +
                       (sent.empty() ? "" : ", though " + sent + " had already been sent") + ".");
  }
}

}  // namespace gradnoise::cli
