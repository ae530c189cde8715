#pragma once
// What the trainer tells its user while it runs: a progress bar with rate and ETA on stderr when
// stderr is a terminal (plain per-epoch lines otherwise, so logs stay readable), and the
// per-epoch metrics as a CSV file, rewritten atomically after every epoch.

#include <unistd.h>

#include <charconv>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "bilevel/core/error.hpp"
#include "bilevel/core/types.hpp"
#include "bilevel/io/file.hpp"

namespace mnist_mlp {

using bilevel::Index;

/// A one-line progress bar, redrawn at most ten times a second.
class progress_bar {
 public:
  /// Draws only when `enabled` and stderr is a terminal.
  explicit progress_bar(bool enabled) : enabled_(enabled && ::isatty(STDERR_FILENO) == 1) {}

  void start_epoch(Index epoch, Index epochs) {
    epoch_ = epoch;
    epochs_ = epochs;
    start_ = last_draw_ = std::chrono::steady_clock::now();
  }

  void batch(Index done, Index total, Index samples) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double rate = seconds > 0 ? double(samples) / seconds : 0;
    const double fraction = double(done) / double(total);
    const int width = 30, filled = int(fraction * width);
    std::ostringstream line;
    line << "\repoch " << epoch_ << "/" << epochs_ << " [" << std::string(std::size_t(filled), '=')
         << std::string(std::size_t(width - filled), ' ') << "] " << std::setw(3)
         << int(100 * fraction) << "%  " << Index(rate) << " samples/s  ETA "
         << std::fixed << std::setprecision(1) << (fraction > 0 ? seconds * (1 / fraction - 1) : 0)
         << " s ";
    std::cerr << line.str() << std::flush;
  }

  /// Clears the bar before a plain line is printed.
  void clear() {
    if (enabled_) std::cerr << "\r\033[K" << std::flush;
  }

 private:
  bool enabled_;
  Index epoch_ = 0, epochs_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

/// Per-epoch metrics as CSV. Resuming keeps the rows of the epochs the checkpoint covers.
class csv_log {
 public:
  csv_log(std::string path, std::vector<std::string> columns)
      : path_(std::move(path)), columns_(std::move(columns)) {}

  /// Keeps the existing file's rows for epochs 1..`epochs` (a resumed run's history).
  void keep_rows_until(Index epochs) {
    std::ifstream in(path_);
    std::string line;
    if (path_.empty() || !std::getline(in, line)) return;
    while (std::getline(in, line)) {
      Index epoch = 0;
      const auto [end, status] = std::from_chars(line.data(), line.data() + line.size(), epoch);
      if (status != std::errc() || end == line.data() + line.size() || *end != ',')
        throw bilevel::data_error("--csv: " + path_ + ": '" + line +
                                  "' is not a row of this trainer's metrics");
      if (epoch <= epochs) rows_.push_back(line);
    }
  }

  /// Adds a row (values in column order) and rewrites the file.
  void add(const std::vector<std::string>& values) {
    if (path_.empty()) return;
    std::string row;
    for (std::size_t i = 0; i < values.size(); ++i) row += (i ? "," : "") + values[i];
    rows_.push_back(row);
    std::string text;
    for (std::size_t i = 0; i < columns_.size(); ++i) text += (i ? "," : "") + columns_[i];
    text += '\n';
    for (const std::string& r : rows_) text += r + '\n';
    bilevel::write_file_atomically(
        path_, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()}, "--csv");
  }

 private:
  std::string path_;
  std::vector<std::string> columns_;
  std::vector<std::string> rows_;
};

}  // namespace mnist_mlp
