// requests.csv as tests read it: the header's columns by name, each row's fields unquoted
// (RFC 4180: a quoted field may hold commas, doubled quotes and newlines). Tests look columns up
// by name, so columns the recorder appends later do not move what they read.
#pragma once

#include <cstddef>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace computron::fakes {

struct RequestsCsv {
  std::vector<std::string> header;
  std::map<std::string, std::size_t> column;  // by name
  std::vector<std::vector<std::string>> rows;

  // Field `name` of row i; throws if the header has no such column.
  const std::string& at(std::size_t i, const std::string& name) const {
    auto it = column.find(name);
    if (it == column.end()) throw std::out_of_range("requests.csv: no column '" + name + "'");
    return rows.at(i).at(it->second);
  }
};

// Splits CSV text into records of fields. A record ends at a newline outside quotes; the text is
// expected to end with one.
inline std::vector<std::vector<std::string>> parseCsvRecords(const std::string& text) {
  std::vector<std::vector<std::string>> records;
  std::vector<std::string> fields;
  std::string field;
  bool quoted = false, any = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c != '"') {
        field += c;
      } else if (i + 1 < text.size() && text[i + 1] == '"') {
        field += '"';
        ++i;
      } else {
        quoted = false;
      }
      continue;
    }
    any = true;
    if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      fields.push_back(field);
      field.clear();
    } else if (c == '\n') {
      fields.push_back(field);
      field.clear();
      records.push_back(fields);
      fields.clear();
      any = false;
    } else {
      field += c;
    }
  }
  if (quoted) throw std::runtime_error("csv: unterminated quoted field");
  if (any) {
    fields.push_back(field);
    records.push_back(fields);
  }
  return records;
}

// The header and rows of a requests.csv's text; throws when a row's width differs from the header's.
inline RequestsCsv parseRequestsCsv(const std::string& text) {
  RequestsCsv csv;
  auto records = parseCsvRecords(text);
  if (records.empty()) throw std::runtime_error("requests.csv: no header");
  csv.header = records.front();
  for (std::size_t i = 0; i < csv.header.size(); ++i) csv.column.emplace(csv.header[i], i);
  for (std::size_t r = 1; r < records.size(); ++r) {
    if (records[r].size() != csv.header.size())
      throw std::runtime_error("requests.csv: row " + std::to_string(r) + " has " + std::to_string(records[r].size()) +
                               " fields, the header " + std::to_string(csv.header.size()));
    csv.rows.push_back(std::move(records[r]));
  }
  return csv;
}

}  // namespace computron::fakes
