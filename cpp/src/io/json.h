// A minimal, strict JSON reader and the string quoting the writers need: objects,
// arrays, strings with escapes, integers (int64), other numbers (as double), true,
// false, null. Duplicate object keys, trailing commas, leading zeros, control
// characters in strings, lone surrogates and nesting deeper than 64 are errors.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mambatron::json {

struct Value {
  enum class Kind { Null, Bool, Int, Float, String, Array, Object };
  Kind kind = Kind::Null;
  bool boolean = false;
  int64_t integer = 0;
  double number = 0;
  std::string string;
  std::vector<Value> array;
  std::vector<std::pair<std::string, Value>> object;  // in file order, keys unique

  bool is_object() const { return kind == Kind::Object; }
  bool is_array() const { return kind == Kind::Array; }
  bool is_string() const { return kind == Kind::String; }
  bool is_int() const { return kind == Kind::Int; }
  // The member named `key` of an object, or nullptr.
  const Value* find(std::string_view key) const;
};

// "object", "array", ... for error messages.
const char* kind_name(Value::Kind k);

// Parses the whole text (surrounding whitespace allowed). On malformed input throws
// ValueError "WHERE: invalid JSON at byte N: WHAT".
Value parse(std::string_view text, const std::string& where);

// A JSON string literal for s, quotes included ("a\"b\n" style escapes; bytes >= 0x80 as is).
std::string quote(std::string_view s);

}  // namespace mambatron::json
