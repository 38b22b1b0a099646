// gradnoise sweep over MPI ranks (docs/MPI.md "Sweeps"): the grid points
// (batch size × learning rate, all their replicas) are divided among the
// ranks, each rank runs its points as sweeps of their own, and rank 0
// assembles the one-process result. A grid point is the unit because its
// across-replica statistics must be summed in the one-process order for the
// summary to come out identical; every run is a pure function of its grid
// point, replica and seed, so its rows are too.
#include "cli/sweep_ranks.hpp"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "distributed.hpp"
#include "gradnoise/error.hpp"
#include "gradnoise/io.hpp"

namespace gradnoise::cli {
namespace {

using json = nlohmann::json;

json optional_json(const std::optional<double>& value) { return value ? json(*value) : json(nullptr); }
std::optional<double> optional_from(const json& value) {
  return value.is_null() ? std::nullopt : std::optional<double>(value.get<double>());
}

json row_json(const SweepRow& row) {
  return {row.run, row.batch_size, row.lr, row.replica, row.step, row.epoch, row.diverged,
          row.train_loss, optional_json(row.test_loss), optional_json(row.test_accuracy),
          optional_json(row.grad_norm_sq), optional_json(row.trace_cov),
          optional_json(row.noise_scale_simple), row.minibatch_loss, row.minibatch_grad_norm_sq,
          row.weight_norm_sq};
}

SweepRow row_from(const json& j) {
  SweepRow row;
  row.run = j[0];
  row.batch_size = j[1];
  row.lr = j[2];
  row.replica = j[3];
  row.step = j[4];
  row.epoch = j[5];
  row.diverged = j[6];
  row.train_loss = j[7];
  row.test_loss = optional_from(j[8]);
  row.test_accuracy = optional_from(j[9]);
  row.grad_norm_sq = optional_from(j[10]);
  row.trace_cov = optional_from(j[11]);
  row.noise_scale_simple = optional_from(j[12]);
  row.minibatch_loss = j[13];
  row.minibatch_grad_norm_sq = j[14];
  row.weight_norm_sq = j[15];
  return row;
}

json stats_json(const ReplicaStats& s) {
  return {s.step, s.live_replicas, optional_json(s.weight_var), optional_json(s.grad_var),
          optional_json(s.expected_minibatch_noise), optional_json(s.train_loss_mean),
          optional_json(s.train_loss_std), optional_json(s.test_loss_mean),
          optional_json(s.test_accuracy_mean)};
}

ReplicaStats stats_from(const json& j) {
  ReplicaStats s;
  s.step = j[0];
  s.live_replicas = j[1];
  s.weight_var = optional_from(j[2]);
  s.grad_var = optional_from(j[3]);
  s.expected_minibatch_noise = optional_from(j[4]);
  s.train_loss_mean = optional_from(j[5]);
  s.train_loss_std = optional_from(j[6]);
  s.test_loss_mean = optional_from(j[7]);
  s.test_accuracy_mean = optional_from(j[8]);
  return s;
}

/// One grid point's result, its runs renumbered as in the whole sweep.
json point_json(std::int64_t point, const SweepResult& r) {
  const GridPointSummary& g = r.grid.at(0);
  json trajectory = json::array();
  for (const ReplicaStats& s : g.trajectory) trajectory.push_back(stats_json(s));
  json rows = json::array(), divergences = json::array(), weights = json::array();
  for (const SweepRow& row : r.rows) rows.push_back(row_json(row));
  for (const Divergence& d : r.divergences) divergences.push_back({d.run, d.step, d.reason});
  for (const std::vector<double>& w : r.final_weights) weights.push_back(w);
  return {{"point", point},
          {"grid", {g.batch_size, g.lr, optional_json(g.train_loss_mean),
                    optional_json(g.train_loss_std), optional_json(g.weight_var),
                    g.diverged_fraction, trajectory}},
          {"rows", rows},
          {"divergences", divergences},
          {"weights", weights},
          {"run_steps", r.run_steps},
          {"device", r.device}};
}

}  // namespace

std::string read_checkpoint(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError("--checkpoint " + path + " cannot be read.");
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

std::vector<int> assign_grid_points(const SweepConfig& config, int ranks) {
  // Longest first to the least loaded rank (ties: the lower rank); a point
  // costs about b × replicas × steps.
  const std::int64_t lrs = static_cast<std::int64_t>(config.lrs.size());
  const std::int64_t points = static_cast<std::int64_t>(config.batch_sizes.size()) * lrs;
  std::vector<std::int64_t> order(static_cast<std::size_t>(points));
  for (std::int64_t p = 0; p < points; ++p) order[static_cast<std::size_t>(p)] = p;
  const auto cost = [&](std::int64_t p) { return config.batch_sizes[static_cast<std::size_t>(p / lrs)]; };
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return cost(a) > cost(b); });
  std::vector<double> load(static_cast<std::size_t>(ranks), 0.0);
  std::vector<int> owner(static_cast<std::size_t>(points), 0);
  for (const std::int64_t p : order) {
    const auto least = static_cast<int>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[static_cast<std::size_t>(p)] = least;
    load[static_cast<std::size_t>(least)] += static_cast<double>(cost(p));
  }
  return owner;
}

std::string rank_checkpoint_path(const std::string& path, int rank, int ranks) {
  return path + ".rank" + std::to_string(rank) + "-of-" + std::to_string(ranks);
}

std::optional<SweepResult> run_sweep_over_ranks(detail::Communicator& comm, const Model& initial,
                                                const Dataset& train, const Dataset* test,
                                                const SweepConfig& config,
                                                const std::string& checkpoint_path,
                                                double checkpoint_every) {
  const auto start = std::chrono::steady_clock::now();
  comm.together([&] { detail::select_rank_device(comm, config.device); });
  const std::vector<int> owner = assign_grid_points(config, comm.size());
  const std::int64_t lrs = static_cast<std::int64_t>(config.lrs.size());
  // This rank's points, each a sweep of one batch size and one learning rate.
  std::vector<std::int64_t> mine;
  std::vector<std::unique_ptr<Sweep>> sweeps;
  const std::string checkpoint =
      checkpoint_path.empty() ? std::string() : rank_checkpoint_path(checkpoint_path, comm.rank(), comm.size());
  comm.together([&] {
    for (std::int64_t p = 0; p < static_cast<std::int64_t>(owner.size()); ++p) {
      if (owner[static_cast<std::size_t>(p)] != comm.rank()) continue;
      SweepConfig point = config;
      point.batch_sizes = {config.batch_sizes[static_cast<std::size_t>(p / lrs)]};
      point.lrs = {config.lrs[static_cast<std::size_t>(p % lrs)]};
      mine.push_back(p);
      sweeps.push_back(std::make_unique<Sweep>(initial, train, test, point));
    }
    if (!checkpoint.empty() && std::filesystem::exists(checkpoint)) {
      const json saved = json::from_cbor(read_checkpoint(checkpoint), true, false);
      if (saved.is_discarded() || !saved.is_array() || saved.size() != sweeps.size()) {
        throw InputError("--checkpoint " + checkpoint + " does not hold this rank's " +
                         std::to_string(sweeps.size()) + " grid points; resume with the same "
                         "options and rank count, or remove it.");
      }
      for (std::size_t i = 0; i < sweeps.size(); ++i) {
        const auto& bytes = saved[i].get_binary();
        sweeps[i]->restore(std::string(bytes.begin(), bytes.end()));
      }
    }
  });

  comm.together([&] {
    auto last_checkpoint = std::chrono::steady_clock::now();
    const auto save = [&] {
      json saved = json::array();
      for (const auto& sweep : sweeps) {
        const std::string bytes = sweep->checkpoint();
        saved.push_back(json::binary(std::vector<std::uint8_t>(bytes.begin(), bytes.end())));
      }
      const std::vector<std::uint8_t> cbor = json::to_cbor(saved);
      write_file_atomic(checkpoint, std::string(cbor.begin(), cbor.end()));
    };
    // Log point by log point over this rank's sweeps, checkpointing as the
    // one-process sweep does.
    bool done = sweeps.empty();
    while (!done) {
      done = true;
      for (const auto& sweep : sweeps) {
        if (!sweep->done()) sweep->advance();
        done = done && sweep->done();
      }
      const auto now = std::chrono::steady_clock::now();
      if (!checkpoint.empty() &&
          (done || std::chrono::duration<double>(now - last_checkpoint).count() >= checkpoint_every)) {
        save();
        last_checkpoint = now;
      }
    }
  });

  json results = json::array();
  for (std::size_t i = 0; i < sweeps.size(); ++i) results.push_back(point_json(mine[i], sweeps[i]->result()));
  const std::vector<std::uint8_t> cbor = json::to_cbor(results);
  const std::vector<std::string> parts = comm.gather(std::string(cbor.begin(), cbor.end()));
  if (comm.rank() != 0) return std::nullopt;

  // The one-process layout: runs grid point major, rows by log step then run.
  const std::int64_t points = static_cast<std::int64_t>(owner.size());
  SweepResult whole;
  whole.num_params = initial.num_params();
  whole.n = train.n;
  whole.grid.resize(static_cast<std::size_t>(points));
  whole.final_weights.resize(static_cast<std::size_t>(points * config.replicas));
  for (const std::string& part : parts) {
    for (const json& point : json::from_cbor(part)) {
      const std::int64_t p = point["point"];
      const std::int64_t first_run = p * config.replicas;
      const json& g = point["grid"];
      GridPointSummary& summary = whole.grid[static_cast<std::size_t>(p)];
      summary.batch_size = g[0];
      summary.lr = g[1];
      summary.train_loss_mean = optional_from(g[2]);
      summary.train_loss_std = optional_from(g[3]);
      summary.weight_var = optional_from(g[4]);
      summary.diverged_fraction = g[5];
      for (const json& s : g[6]) summary.trajectory.push_back(stats_from(s));
      for (const json& r : point["rows"]) {
        SweepRow row = row_from(r);
        row.run += first_run;
        whole.rows.push_back(row);
      }
      for (const json& d : point["divergences"]) {
        whole.divergences.push_back({first_run + d[0].get<std::int64_t>(), d[1], d[2]});
      }
      std::int64_t run = first_run;
      for (const json& w : point["weights"]) whole.final_weights[static_cast<std::size_t>(run++)] = w.get<std::vector<double>>();
      whole.run_steps += point["run_steps"].get<std::int64_t>();
      whole.device = point["device"];
    }
  }
  // A row belongs to the log point at or after its step (a diverged run's
  // last row carries the step it diverged at).
  const auto log_point = [&](std::int64_t step) {
    const std::int64_t every = config.log_every;
    return std::min(config.steps, (step + every - 1) / every * every);
  };
  std::stable_sort(whole.rows.begin(), whole.rows.end(), [&](const SweepRow& a, const SweepRow& b) {
    const std::int64_t la = log_point(a.step), lb = log_point(b.step);
    return la != lb ? la < lb : a.run < b.run;
  });
  std::sort(whole.divergences.begin(), whole.divergences.end(),
            [](const Divergence& a, const Divergence& b) { return a.run < b.run; });
  whole.elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return whole;
}

}  // namespace gradnoise::cli
