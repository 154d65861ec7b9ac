// SPDX-License-Identifier: MIT
// Training curves as an SVG: the reward per step (mean over seeds, moving average) of one or
// more methods, read from the metrics.jsonl files that `ipa train` writes.
// usage: 03_plot_curves OUT.svg "TITLE" LABEL=RUN_DIR[,RUN_DIR...] [LABEL=...]...
//        03_plot_curves --table RESULTS.jsonl   (the demo's table: mean and spread over seeds)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

std::vector<double> rewards_of(const std::string& run) {
  std::ifstream in(run + "/metrics.jsonl");
  if (!in) throw std::runtime_error(run + "/metrics.jsonl: cannot open");
  std::vector<double> r;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) r.push_back(nlohmann::json::parse(line).at("reward").get<double>());
  return r;
}

std::vector<double> smooth(const std::vector<double>& x, std::size_t window) {
  std::vector<double> out(x.size());
  double sum = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    sum += x[i];
    if (i >= window) sum -= x[i - window];
    out[i] = sum / double(std::min(i + 1, window));
  }
  return out;
}

// One markdown row per (task, method): mean over seeds, with min..max of the reward.
int print_table(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  struct cell {
    std::vector<double> reward, ppl, d2, len;
    std::vector<int> seed;
  };
  std::vector<std::pair<std::string, cell>> rows;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    const std::string key = j.at("task").get<std::string>() + " | " + j.at("method").get<std::string>();
    auto it = std::find_if(rows.begin(), rows.end(), [&](const auto& r) { return r.first == key; });
    if (it == rows.end()) it = rows.insert(rows.end(), {key, {}});
    it->second.reward.push_back(j.at("reward").get<double>());
    it->second.ppl.push_back(j.at("base_perplexity").get<double>());
    it->second.d2.push_back(j.at("distinct_2").get<double>());
    it->second.len.push_back(j.at("mean_length").get<double>());
    it->second.seed.push_back(j.at("seed").get<int>());
  }
  auto mean = [](const std::vector<double>& v) {
    double s = 0;
    for (double x : v) s += x;
    return s / double(v.size());
  };
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
  };
  std::printf(
      "| task | method | seeds | held-out reward, mean (min..max) | base perplexity, median | distinct-2 | length |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  for (const auto& [key, c] : rows)
    std::printf("| %s | %zu | %.3f (%.3f..%.3f) | %.2f | %.3f | %.0f |\n", key.c_str(), c.reward.size(), mean(c.reward),
                *std::min_element(c.reward.begin(), c.reward.end()),
                *std::max_element(c.reward.begin(), c.reward.end()), median(c.ppl), mean(c.d2), mean(c.len));
  std::printf(
      "\nPer seed (reward / base perplexity / distinct-2 / length):\n\n| task | method | seed 1 | seed 2 | seed 3 |\n");
  std::printf("| --- | --- | --- | --- | --- |\n");
  for (const auto& [key, c] : rows) {
    std::printf("| %s |", key.c_str());
    for (int s = 1; s <= 3; ++s) {
      const auto it = std::find(c.seed.begin(), c.seed.end(), s);
      if (it == c.seed.end()) {
        std::printf(" - |");
        continue;
      }
      const std::size_t i = std::size_t(it - c.seed.begin());
      std::printf(" %.3f / %.4g / %.3f / %.0f |", c.reward[i], c.ppl[i], c.d2[i], c.len[i]);
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) try {
  if (argc == 3 && std::string(argv[1]) == "--table") return print_table(argv[2]);
  if (argc < 4) {
    std::cerr << "usage: 03_plot_curves OUT.svg TITLE LABEL=RUN_DIR[,RUN_DIR...]...\n";
    return 2;
  }
  const char* colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"};
  struct series {
    std::string label;
    std::vector<double> y;
  };
  std::vector<series> all;
  std::size_t longest = 1;
  for (int i = 3; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto eq = arg.find('=');
    if (eq == std::string::npos) throw std::runtime_error("expected LABEL=RUN_DIR[,...], found " + arg);
    std::vector<std::vector<double>> runs;
    std::stringstream dirs(arg.substr(eq + 1));
    for (std::string d; std::getline(dirs, d, ',');) runs.push_back(rewards_of(d));
    std::size_t n = runs[0].size();
    for (const auto& r : runs) n = std::min(n, r.size());
    std::vector<double> mean(n, 0.0);
    for (const auto& r : runs)
      for (std::size_t s = 0; s < n; ++s) mean[s] += r[s] / double(runs.size());
    all.push_back({arg.substr(0, eq) + " (" + std::to_string(runs.size()) + " seeds)", smooth(mean, 25)});
    longest = std::max(longest, n);
  }
  const double W = 640, H = 400, left = 60, right = 20, top = 40, bottom = 50;
  double lo = 1e9, hi = -1e9;
  for (const auto& s : all)
    for (double v : s.y) lo = std::min(lo, v), hi = std::max(hi, v);
  lo = std::floor(lo * 10) / 10, hi = std::ceil(hi * 10) / 10;
  if (hi <= lo) hi = lo + 0.1;
  auto X = [&](double step) { return left + (W - left - right) * step / double(longest); };
  auto Y = [&](double v) { return top + (H - top - bottom) * (1 - (v - lo) / (hi - lo)); };
  std::ofstream out(argv[1]);
  out << "<svg xmlns='http://www.w3.org/2000/svg' width='" << W << "' height='" << H
      << "' font-family='sans-serif' font-size='12'>\n<rect width='100%' height='100%' fill='white'/>\n";
  out << "<text x='" << W / 2 << "' y='22' text-anchor='middle' font-size='15'>" << argv[2] << "</text>\n";
  for (int k = 0; k <= 5; ++k) {  // horizontal grid and reward ticks
    const double v = lo + (hi - lo) * k / 5;
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", v);
    out << "<line x1='" << left << "' x2='" << W - right << "' y1='" << Y(v) << "' y2='" << Y(v)
        << "' stroke='#ddd'/>\n<text x='" << left - 6 << "' y='" << Y(v) + 4 << "' text-anchor='end'>" << buf
        << "</text>\n";
  }
  for (int k = 0; k <= 4; ++k) {
    const double step = double(longest) * k / 4;
    out << "<text x='" << X(step) << "' y='" << H - bottom + 18 << "' text-anchor='middle'>" << long(step)
        << "</text>\n";
  }
  out << "<text x='" << W / 2 << "' y='" << H - 12 << "' text-anchor='middle'>training step</text>\n";
  out << "<text x='16' y='" << H / 2 << "' transform='rotate(-90 16 " << H / 2
      << ")' text-anchor='middle'>reward (mean over seeds, moving average of 25 steps)</text>\n";
  for (std::size_t i = 0; i < all.size(); ++i) {
    out << "<polyline fill='none' stroke-width='2' stroke='" << colors[i % 6] << "' points='";
    for (std::size_t s = 0; s < all[i].y.size(); ++s) out << X(double(s)) << ',' << Y(all[i].y[s]) << ' ';
    out << "'/>\n<text x='" << left + 10 << "' y='" << top + 16 * double(i + 1) << "' fill='" << colors[i % 6] << "'>"
        << all[i].label << "</text>\n";
  }
  out << "</svg>\n";
  return 0;
} catch (const std::exception& e) {
  std::cerr << "03_plot_curves: " << e.what() << "\n";
  return 1;
}
