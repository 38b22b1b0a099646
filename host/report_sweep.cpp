// The sweep's JSON summary (gradnoise sweep --summary, the Python module's
// SweepResult.to_dict()): per grid point the loss, the weight variance, the
// divergences and the trajectory across replicas (docs/SWEEP.md).
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "gradnoise/report.hpp"

namespace gradnoise {
namespace {

using json = nlohmann::ordered_json;

json optional_json(const std::optional<double>& value) {
  return value && std::isfinite(*value) ? json(*value) : json(nullptr);
}

}  // namespace

json sweep_summary_json(const SweepResult& result, const SweepConfig& config, const Profile& start,
                        const SweepReportContext& context) {
  json grid = json::array();
  for (const GridPointSummary& point : result.grid) {
    json trajectory = json::array();
    for (const ReplicaStats& stats : point.trajectory) {
      trajectory.push_back({{"step", stats.step},
                            {"live_replicas", stats.live_replicas},
                            {"weight_var", optional_json(stats.weight_var)},
                            {"grad_var", optional_json(stats.grad_var)},
                            {"expected_minibatch_noise", optional_json(stats.expected_minibatch_noise)},
                            {"train_loss_mean", optional_json(stats.train_loss_mean)},
                            {"train_loss_std", optional_json(stats.train_loss_std)},
                            {"test_loss_mean", optional_json(stats.test_loss_mean)},
                            {"test_accuracy_mean", optional_json(stats.test_accuracy_mean)}});
    }
    const ReplicaStats* last = point.trajectory.empty() ? nullptr : &point.trajectory.back();
    grid.push_back({{"batch_size", point.batch_size},
                    {"lr", point.lr},
                    {"train_loss_mean", optional_json(point.train_loss_mean)},
                    {"train_loss_std", optional_json(point.train_loss_std)},
                    {"weight_var", optional_json(point.weight_var)},
                    {"diverged_fraction", point.diverged_fraction},
                    {"final_test_loss_mean", last ? optional_json(last->test_loss_mean) : json(nullptr)},
                    {"final_test_accuracy_mean",
                     last ? optional_json(last->test_accuracy_mean) : json(nullptr)},
                    {"trajectory", trajectory}});
  }
  // A row of each run, for the grid point and replica of its divergence.
  std::vector<const SweepRow*> row_of(result.final_weights.size(), nullptr);
  for (const SweepRow& row : result.rows) {
    if (!row_of[static_cast<std::size_t>(row.run)]) row_of[static_cast<std::size_t>(row.run)] = &row;
  }
  json divergences = json::array();
  for (const Divergence& d : result.divergences) {
    const SweepRow* any = row_of[static_cast<std::size_t>(d.run)];
    divergences.push_back({{"run", d.run},
                           {"batch_size", any ? any->batch_size : 0},
                           {"lr", any ? any->lr : 0.0},
                           {"replica", any ? any->replica : 0},
                           {"step", d.step},
                           {"reason", d.reason}});
  }
  const double rate = result.elapsed_s > 0 ? static_cast<double>(result.run_steps) / result.elapsed_s : 0;
  return {{"gradnoise_version", version()},
          {"command", "sweep"},
          {"loss", loss_name(config.loss)},
          {"data", context.data},
          {"model", context.model},
          {"num_params", result.num_params},
          {"config",
           {{"batch_sizes", config.batch_sizes},
            {"lrs", config.lrs},
            {"replicas", config.replicas},
            {"first_replica", config.first_replica},
            {"steps", config.steps},
            {"sampling", sampling_name(config.sampling)},
            {"label_noise", config.label_noise},
            {"weight_decay", config.weight_decay},
            {"momentum", config.momentum},
            {"log_every", config.log_every},
            {"seed", config.seed},
            {"profile", config.profile},
            {"divergence_factor", config.divergence_factor},
            {"test_data", context.test_data},
            {"device_requested", context.device_requested},
            {"device", result.device}}},
          {"start",
           {{"train_loss", start.loss},
            {"grad_norm_sq", start.grad_norm_sq},
            {"trace_cov", start.trace_cov},
            {"noise_scale_simple", optional_json(start.noise_scale_simple)}}},
          {"num_runs", static_cast<std::int64_t>(result.final_weights.size())},
          {"run_steps", result.run_steps},
          {"elapsed_s", result.elapsed_s},
          {"run_steps_per_s", rate},
          {"grid", grid},
          {"divergences", divergences}};
}

}  // namespace gradnoise
