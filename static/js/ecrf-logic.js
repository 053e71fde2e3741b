/*
 * SuifangLogic: JSON Logic for live eCRF branching, calculations and edit checks.
 *
 * The server (ecrf/logic.py) is the source of truth; this file makes the browser agree with
 * it. It configures json-logic-js 2.0.5 (static_build/vendor/json-logic.js, loaded first):
 *   - adds the custom operators round, date_diff, today, is_empty (semantics documented in
 *     ecrf/logic.py, implemented identically here);
 *   - removes `log`, and replaces `var` with a version that reads only the data's own
 *     values (object keys, array indexes), so no expression can reach a prototype or a
 *     function; `merge` and `cat` get the array and string size limits;
 *   - validates every expression with the server's rules before evaluating it, and while
 *     evaluating counts operations and checks the arrays map/filter/reduce/all/none/some walk.
 *
 *   SuifangLogic.evaluate(expr, data)  -> canonical JSON value (NaN/Infinity/undefined -> null)
 *   SuifangLogic.validate(expr)        -> [problem, ...]
 *   SuifangLogic.variables(expr)       -> sorted field paths the expression reads
 *   SuifangLogic.truthy(value)         -> json-logic truthiness ([] is falsy)
 *
 * Works in the browser (window.SuifangLogic, needs window.jsonLogic) and under Node via
 * module.exports (requires the npm package json-logic-js), which the parity test uses.
 */
/* globals define, module, require, self */
(function (root, factory) {
  "use strict";
  if (typeof module === "object" && module.exports) {
    module.exports = factory(require("json-logic-js"));
  } else {
    root.SuifangLogic = factory(root.jsonLogic);
  }
}(typeof self !== "undefined" ? self : this, function (jsonLogic) {
  "use strict";

  // Keep these equal to ecrf/logic.py.
  var MAX_DEPTH = 32;
  var MAX_NODES = 500;
  var MAX_SERIALISED_BYTES = 16 * 1024;
  var MAX_ARRAY_LENGTH = 1000;
  var MAX_STRING_LENGTH = 10000;
  var MAX_OPERATIONS = 100000;
  var ROUND_MAX_DIGITS = 10;
  var TODAY_KEY = "_today";
  var DATE_UNITS = {days: true, months: true, years: true};

  // [minimum, maximum] argument counts; null: unbounded.
  var OPERATORS = {
    "==": [2, 2], "===": [2, 2], "!=": [2, 2], "!==": [2, 2],
    ">": [2, 2], ">=": [2, 2], "<": [2, 3], "<=": [2, 3],
    "!": [1, 1], "!!": [1, 1], "and": [1, null], "or": [1, null], "if": [1, null],
    "+": [1, null], "-": [1, 2], "*": [1, null], "/": [2, 2], "%": [2, 2],
    "min": [1, null], "max": [1, null],
    "var": [1, 2], "missing": [1, null], "missing_some": [2, 2],
    "in": [2, 2], "cat": [1, null], "substr": [2, 3], "merge": [1, null],
    "map": [2, 2], "filter": [2, 2], "reduce": [2, 3], "all": [2, 2], "none": [2, 2], "some": [2, 2],
    "round": [1, 2], "date_diff": [3, 3], "today": [0, 0], "is_empty": [1, 1]
  };
  var SCOPED_OPERATORS = {map: true, filter: true, reduce: true, all: true, none: true, some: true};

  var VAR_PATH = /^[A-Za-z0-9_.]{1,200}$/;
  var ARRAY_INDEX = /^(?:0|[1-9][0-9]*)$/;
  var ISO_DATE = /^([0-9]{4})-([0-9]{2})-([0-9]{2})$/;
  var hasOwn = Object.prototype.hasOwnProperty;

  function LogicError(message) {
    var error = new Error(message);
    error.name = "LogicError";
    Object.setPrototypeOf(error, LogicError.prototype);
    return error;
  }
  LogicError.prototype = Object.create(Error.prototype, {
    constructor: {value: LogicError, writable: true, configurable: true}
  });

  function isPlainObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  // --- validation ------------------------------------------------------------------------

  function shortJson(value) {
    var text;
    try { text = JSON.stringify(value); } catch (error) { text = String(value); }
    if (text === undefined) text = String(value);
    return text.length <= 60 ? text : text.slice(0, 57) + "...";
  }

  function utf8Length(text) {
    var bytes = 0;
    for (var i = 0; i < text.length; i += 1) {
      var unit = text.charCodeAt(i);
      if (unit < 0x80) bytes += 1;
      else if (unit < 0x800) bytes += 2;
      else if (unit >= 0xd800 && unit <= 0xdbff && i + 1 < text.length &&
               text.charCodeAt(i + 1) >= 0xdc00 && text.charCodeAt(i + 1) <= 0xdfff) { bytes += 4; i += 1; }
      else bytes += 3;
    }
    return bytes;
  }

  function validate(expr) {
    var problems = [];
    var nodes = 0;
    var stack = [[expr, 1, false, "$"]];

    function count(node, depth, where) {
      nodes += 1;
      if (nodes > MAX_NODES) {
        problems.push("expression has more than " + MAX_NODES + " nodes");
        return false;
      }
      if (node !== null && typeof node === "object" && depth > MAX_DEPTH) {
        problems.push(where + ": expression is nested deeper than " + MAX_DEPTH + " levels");
        return false;
      }
      return true;
    }

    function checkPath(path, scoped, where, literalOnly) {
      if (typeof path === "number" && Number.isInteger(path) && path >= 0 && !literalOnly) return;
      if (path === "" && scoped) return;
      if (typeof path === "string" && VAR_PATH.test(path)) return;
      if (path === "") {
        problems.push(where + ": the empty path (the current element) is only allowed inside " +
                      "all, filter, map, none, reduce, some");
        return;
      }
      problems.push(where + ": field paths are literal strings matching [A-Za-z0-9_.]{1,200}, got " + shortJson(path));
    }

    function operator(node, depth, scoped, where) {
      var keys = Object.keys(node);
      if (keys.length !== 1) {
        problems.push(where + ": an operator object has exactly one key, got " + keys.length +
                      " (" + keys.slice(0, 5).join(", ") + ")");
        return false;
      }
      var op = keys[0];
      if (!hasOwn.call(OPERATORS, op)) {
        problems.push(where + ": unknown or forbidden operator '" + op + "'");
        return false;
      }
      where = where + "." + op;
      var raw = node[op];
      var args = Array.isArray(raw) ? raw : [raw];
      var argDepth = depth + 1;
      if (Array.isArray(raw)) {
        if (!count(raw, depth + 1, where)) return true;  // stop: a limit was hit
        argDepth = depth + 2;
      }
      var low = OPERATORS[op][0], high = OPERATORS[op][1];
      if (args.length < low || (high !== null && args.length > high)) {
        var expected = low === high ? String(low) : high !== null ? low + ".." + high : "at least " + low;
        problems.push(where + ": takes " + expected + " argument(s), got " + args.length);
        return false;
      }
      var i;
      if (op === "var") {
        checkPath(args[0], scoped, where, false);
      } else if (op === "missing") {
        var keysToCheck = args.length === 1 && Array.isArray(args[0]) ? args[0] : args;
        for (i = 0; i < keysToCheck.length; i += 1) checkPath(keysToCheck[i], scoped, where, true);
      } else if (op === "missing_some") {
        if (!(typeof args[0] === "number" && Number.isInteger(args[0]) && args[0] >= 0)) {
          problems.push(where + ": the first argument is a non-negative integer literal");
        }
        if (!Array.isArray(args[1])) {
          problems.push(where + ": the second argument is a literal array of field paths");
        } else {
          for (i = 0; i < args[1].length; i += 1) checkPath(args[1][i], scoped, where, true);
        }
      } else if (op === "date_diff" && !(typeof args[0] === "string" && hasOwn.call(DATE_UNITS, args[0]))) {
        problems.push(where + ": the unit is one of days, months, years (a literal)");
      }
      for (i = args.length - 1; i >= 0; i -= 1) {
        stack.push([args[i], argDepth, scoped || (SCOPED_OPERATORS[op] === true && i === 1), where + "[" + i + "]"]);
      }
      return false;
    }

    while (stack.length) {
      var entry = stack.pop();
      var node = entry[0], depth = entry[1], scoped = entry[2], where = entry[3];
      if (!count(node, depth, where)) return problems;
      if (Array.isArray(node)) {
        for (var index = node.length - 1; index >= 0; index -= 1) {
          stack.push([node[index], depth + 1, scoped, where + "[" + index + "]"]);
        }
      } else if (node !== null && typeof node === "object") {
        // Plain objects only (a Date or RegExp is no JSON); the tag also works across realms.
        if (Object.prototype.toString.call(node) !== "[object Object]") {
          problems.push(where + ": unsupported value " + Object.prototype.toString.call(node));
        } else if (operator(node, depth, scoped, where)) {
          return problems;
        }
      } else if (typeof node === "number") {
        if (!isFinite(node)) problems.push(where + ": numbers must be finite");
      } else if (node !== null && typeof node !== "string" && typeof node !== "boolean") {
        problems.push(where + ": unsupported value of type " + typeof node);
      }
    }
    if (!problems.length) {
      var size = utf8Length(JSON.stringify(expr));
      if (size > MAX_SERIALISED_BYTES) {
        problems.push("expression is " + size + " bytes of JSON; the limit is " + MAX_SERIALISED_BYTES);
      }
    }
    return problems;
  }

  function requireValid(expr) {
    var problems = validate(expr);
    if (problems.length) throw LogicError("invalid logic: " + problems.join("; "));
  }

  function variables(expr) {
    requireValid(expr);
    var found = Object.create(null);  // so that a "__proto__" path is an ordinary key
    function walk(node) {
      var i;
      if (Array.isArray(node)) {
        for (i = 0; i < node.length; i += 1) walk(node[i]);
        return;
      }
      if (!isPlainObject(node)) return;
      var op = Object.keys(node)[0];
      var args = Array.isArray(node[op]) ? node[op] : [node[op]];
      if (op === "var") {
        found[String(args[0])] = true;
        for (i = 1; i < args.length; i += 1) walk(args[i]);
      } else if (op === "missing") {
        var keys = args.length === 1 && Array.isArray(args[0]) ? args[0] : args;
        for (i = 0; i < keys.length; i += 1) found[keys[i]] = true;
      } else if (op === "missing_some") {
        for (i = 0; i < args[1].length; i += 1) found[args[1][i]] = true;
      } else {
        for (i = 0; i < args.length; i += 1) {
          if (!(SCOPED_OPERATORS[op] === true && i === 1)) walk(args[i]);  // element-relative
        }
      }
    }
    walk(expr);
    return Object.keys(found).sort();
  }

  // --- custom and replaced operators ---------------------------------------------------------

  function truthy(value) {
    return jsonLogic.truthy(value);
  }

  // Shortest round-trip digits of a positive finite number: {digits, exponent} with
  // value = digits * 10^exponent, the same digits Python's repr prints.
  function shortestDigits(number) {
    var parts = number.toExponential().split("e");
    var mantissa = parts[0].replace(".", "");
    var digits = mantissa.replace(/0+$/, "") || "0";
    var exponent = Number(parts[1]) - (mantissa.length - 1) + (mantissa.length - digits.length);
    return {digits: digits, exponent: exponent};
  }

  function jsWhitespaceOnly(text) {
    return text.trim() === "";
  }

  function roundHalfAwayFromZero(value, digits) {
    var number;
    if (value === null || value === undefined || typeof value === "boolean" || typeof value === "object") return null;
    if (typeof value === "string") {
      if (jsWhitespaceOnly(value)) return null;
      number = Number(value);
    } else {
      number = value;
    }
    if (!isFinite(number)) return null;
    var places;
    if (digits === undefined) {
      places = 0;
    } else if (typeof digits === "number" && Number.isInteger(digits) && digits >= 0 && digits <= ROUND_MAX_DIGITS) {
      places = digits;
    } else {
      return null;
    }
    if (number === 0) return 0;
    var shortest = shortestDigits(Math.abs(number));
    var drop = -places - shortest.exponent;  // digits right of the kept decimal place
    if (drop <= 0) return number;
    var length = shortest.digits.length;
    if (drop > length) return 0;
    // Digit strings, not floats: the kept part can exceed 2^53 (e.g. 1e20 rounded to 10 places).
    var kept = shortest.digits.slice(0, length - drop) || "0";
    if (shortest.digits.charAt(length - drop) >= "5") kept = incrementDigits(kept);  // >= half: away from zero
    if (/^0+$/.test(kept)) return 0;
    return parseFloat((number < 0 ? "-" : "") + kept + "e-" + places);
  }

  function incrementDigits(digits) {
    var result = "";
    var carry = 1;
    for (var i = digits.length - 1; i >= 0; i -= 1) {
      var sum = digits.charCodeAt(i) - 48 + carry;
      carry = sum >= 10 ? 1 : 0;
      result = String(sum % 10) + result;
    }
    return carry ? "1" + result : result;
  }

  function isoDate(value) {
    if (typeof value !== "string") return null;
    var match = ISO_DATE.exec(value);
    if (!match) return null;
    var year = Number(match[1]), month = Number(match[2]), day = Number(match[3]);
    if (year < 1 || month < 1 || month > 12 || day < 1 || day > daysInMonth(year, month)) return null;
    return {year: year, month: month, day: day};
  }

  function isLeapYear(year) {
    return (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  }

  function daysInMonth(year, month) {
    return [31, isLeapYear(year) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1];
  }

  // Days since 1970-01-01 in the proleptic Gregorian calendar, without Date (no time zones).
  function dayNumber(date) {
    var year = date.year - (date.month <= 2 ? 1 : 0);
    var era = Math.floor(year / 400);
    var yearOfEra = year - era * 400;
    var dayOfYear = Math.floor((153 * (date.month + (date.month > 2 ? -3 : 9)) + 2) / 5) + date.day - 1;
    var dayOfEra = yearOfEra * 365 + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100) + dayOfYear;
    return era * 146097 + dayOfEra - 719468;
  }

  function wholeMonths(earlier, later) {
    var months = (later.year - earlier.year) * 12 + later.month - earlier.month;
    return later.day < earlier.day ? months - 1 : months;
  }

  function dateDiff(unit, from, to) {
    var first = isoDate(from), second = isoDate(to);
    if (!first || !second || typeof unit !== "string" || !hasOwn.call(DATE_UNITS, unit)) return null;
    var firstDay = dayNumber(first), secondDay = dayNumber(second);
    if (unit === "days") return secondDay - firstDay;
    var months = secondDay >= firstDay ? wholeMonths(first, second) : -wholeMonths(second, first);
    if (unit === "months") return months;
    return months >= 0 ? Math.floor(months / 12) : -Math.floor(-months / 12);
  }

  function isEmpty(value) {
    return value === null || value === undefined || value === "" || (Array.isArray(value) && value.length === 0);
  }

  // Own values only: an object's own keys, an array's canonical indexes.
  function ownProperty(value, key) {
    if (Array.isArray(value)) {
      return ARRAY_INDEX.test(key) && Number(key) < value.length ? value[Number(key)] : undefined;
    }
    if (value !== null && typeof value === "object" && hasOwn.call(value, key)) return value[key];
    return undefined;
  }

  // json-logic-js's `var`, with data[sub] replaced by ownProperty.
  function ownVar(a, b) {
    var notFound = b === undefined ? null : b;
    var data = this;
    if (typeof a === "undefined" || a === "" || a === null) return data;
    var segments = String(a).split(".");
    for (var i = 0; i < segments.length; i += 1) {
      if (data === null || data === undefined) return notFound;
      data = ownProperty(data, segments[i]);
      if (data === undefined) return notFound;
    }
    return data;
  }

  var active = null;  // {root, operations, nextIsSource} while evaluate() runs

  function today() {
    var rootData = active ? active.root : null;
    if (!isPlainObject(rootData) || !hasOwn.call(rootData, TODAY_KEY)) return null;
    return isoDate(rootData[TODAY_KEY]) ? rootData[TODAY_KEY] : null;
  }

  // Same code as json-logic-js's cat and merge, plus the size limits.
  function catWithLimit() {
    var result = Array.prototype.join.call(arguments, "");
    if (result.length > MAX_STRING_LENGTH) {  // UTF-16 code units, as ecrf/logic.py counts
      throw LogicError("strings built by logic are limited to " + MAX_STRING_LENGTH + " characters");
    }
    return result;
  }

  function mergeWithLimit() {
    var result = Array.prototype.reduce.call(arguments, function (a, b) { return a.concat(b); }, []);
    if (result.length > MAX_ARRAY_LENGTH) {
      throw LogicError("arrays built by logic are limited to " + MAX_ARRAY_LENGTH + " elements, got " + result.length);
    }
    return result;
  }

  jsonLogic.rm_operation("log");
  jsonLogic.add_operation("var", ownVar);
  jsonLogic.add_operation("cat", catWithLimit);
  jsonLogic.add_operation("merge", mergeWithLimit);
  jsonLogic.add_operation("round", function (value, digits) { return roundHalfAwayFromZero(value, digits); });
  jsonLogic.add_operation("date_diff", function (unit, from, to) { return dateDiff(unit, from, to); });
  jsonLogic.add_operation("today", today);
  jsonLogic.add_operation("is_empty", function (value) { return isEmpty(value); });

  // --- evaluation ----------------------------------------------------------------------------

  function canonical(value) {
    if (value === undefined || value === null) return null;
    if (typeof value === "number") {
      if (!isFinite(value)) return null;
      return value === 0 ? 0 : value;  // -0 -> 0
    }
    if (Array.isArray(value)) return value.map(canonical);
    if (typeof value === "object") {
      var copy = {};
      Object.keys(value).forEach(function (key) {
        if (value[key] !== undefined) copy[key] = canonical(value[key]);
      });
      return copy;
    }
    return value;
  }

  function evaluate(expr, data) {
    requireValid(expr);
    if (data === undefined) data = null;
    var stockApply = jsonLogic.apply;
    var state = {root: data, operations: 0, nextIsSource: false};
    // Wrap apply for the duration of this call: json-logic-js recurses through
    // jsonLogic.apply, so the wrapper sees every node (to count operations) and, right after
    // an iteration operator, the evaluation of the array it will walk (its first recursion).
    jsonLogic.apply = function guardedApply(logic, scopeData) {
      var isSource = state.nextIsSource;
      state.nextIsSource = false;
      if (jsonLogic.is_logic(logic)) {
        state.operations += 1;
        if (state.operations > MAX_OPERATIONS) {
          throw LogicError("evaluation exceeded " + MAX_OPERATIONS + " operations");
        }
        if (SCOPED_OPERATORS[jsonLogic.get_operator(logic)] === true) state.nextIsSource = true;
      }
      var result = stockApply(logic, scopeData);
      if (isSource && Array.isArray(result) && result.length > MAX_ARRAY_LENGTH) {
        throw LogicError("arrays walked by logic are limited to " + MAX_ARRAY_LENGTH + " elements, got " + result.length);
      }
      return result;
    };
    var previous = active;
    active = state;
    try {
      return canonical(jsonLogic.apply(expr, data));
    } catch (error) {
      if (error instanceof LogicError) throw error;
      throw LogicError(error && error.message ? error.message : String(error));  // e.g. a TypeError
    } finally {
      jsonLogic.apply = stockApply;
      active = previous;
    }
  }

  return {
    evaluate: evaluate,
    validate: validate,
    variables: variables,
    truthy: truthy,
    LogicError: LogicError,
    limits: {
      maxDepth: MAX_DEPTH, maxNodes: MAX_NODES, maxSerialisedBytes: MAX_SERIALISED_BYTES,
      maxArrayLength: MAX_ARRAY_LENGTH, maxStringLength: MAX_STRING_LENGTH, maxOperations: MAX_OPERATIONS
    }
  };
}));
