// Syntax highlighting for Rust, C and C++: a small tokenizer, no grammar. It knows
// keywords, strings (raw strings too), characters, lifetimes, comments, numbers, macros,
// attributes and preprocessor lines; everything else stays plain text.

import { esc } from './dom.js';

const RUST_KW = new Set(('as async await break const continue crate dyn else enum extern false fn for if impl in let loop ' +
  'match mod move mut pub ref return self Self static struct super trait true type union unsafe use where while yield ' +
  'box try macro_rules').split(' '));
const RUST_TY = new Set('i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize f32 f64 bool char str String Vec Option Result Box'.split(' '));
const C_KW = new Set(('auto break case char const continue default do double else enum extern float for goto if inline int long ' +
  'register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while _Bool ' +
  'bool true false NULL nullptr alignas alignof and asm catch class constexpr consteval constinit co_await co_return ' +
  'co_yield concept decltype delete dynamic_cast explicit export friend mutable namespace new noexcept not operator ' +
  'or private protected public reinterpret_cast requires static_assert static_cast template this thread_local throw ' +
  'try typeid typename using virtual override final').split(' '));
const C_TY = new Set('size_t ssize_t int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t uintptr_t intptr_t std string vector'.split(' '));

/** The language of a file by its name: `rust`, `c` (C and C++) or null (plain text). */
export function languageOf(path) {
  const ext = String(path).split('.').pop().toLowerCase();
  if (ext === 'rs') return 'rust';
  if (['c', 'h', 'cc', 'cpp', 'cxx', 'c++', 'hpp', 'hh', 'hxx', 'h++', 'inl', 'ipp'].includes(ext)) return 'c';
  return null;
}

const RUST_RE = new RegExp([
  String.raw`(?<com>\/\/[^\n]*|\/\*[\s\S]*?(?:\*\/|$))`,
  String.raw`(?<str>b?r(?<hash>#*)"[\s\S]*?(?:"\k<hash>|$)|b?"(?:[^"\\]|\\[\s\S])*(?:"|$))`,
  String.raw`(?<chr>b?'(?:[^'\\\n]|\\[^'\n]{1,10})')`,
  String.raw`(?<lt>'[A-Za-z_]\w*)`,
  String.raw`(?<attr>#!?\[[^\]\n]*\]?)`,
  String.raw`(?<num>\b(?:0x[0-9a-fA-F_]+|0o[0-7_]+|0b[01_]+|\d[\d_]*(?:\.\d[\d_]*)?(?:[eE][+-]?\d+)?)(?:[iuf](?:8|16|32|64|128|size))?\b)`,
  String.raw`(?<id>[A-Za-z_]\w*)(?<bang>!)?(?=(?<call>\s*\()?)`,
].join('|'), 'gm');

const C_RE = new RegExp([
  String.raw`(?<com>\/\/[^\n]*|\/\*[\s\S]*?(?:\*\/|$))`,
  String.raw`(?<pp>^[ \t]*#[ \t]*\w+)`,
  String.raw`(?<str>(?:u8|[uUL])?R"(?<delim>[^(\s]*)\([\s\S]*?(?:\)\k<delim>"|$)|(?:u8|[uUL])?"(?:[^"\\\n]|\\[\s\S])*(?:"|$))`,
  String.raw`(?<chr>(?:u8|[uUL])?'(?:[^'\\\n]|\\[^'\n]{1,10})')`,
  String.raw`(?<num>\b(?:0[xX][0-9a-fA-F']+|\d[\d']*(?:\.\d*)?(?:[eE][+-]?\d+)?)[uUlLfF]*\b)`,
  String.raw`(?<id>[A-Za-z_]\w*)(?=(?<call>\s*\()?)`,
].join('|'), 'gm');

function classify(lang, g) {
  for (const k of ['com', 'str', 'chr', 'lt', 'attr', 'pp', 'num']) if (g[k] !== undefined) return k;
  const id = g.id;
  if (lang === 'rust') {
    if (g.bang) return 'mac';
    if (RUST_KW.has(id)) return 'kw';
    if (RUST_TY.has(id) || /^[A-Z][a-z0-9]\w*$/.test(id)) return 'ty';
  } else {
    if (C_KW.has(id)) return 'kw';
    if (C_TY.has(id) || /_t$/.test(id)) return 'ty';
  }
  if (g.call !== undefined) return 'fn';
  return null;
}

/**
 * Splits `text` into lines of HTML with `<span class="t-KIND">` around tokens. Plain text
 * for unknown languages. Runs over the whole text once, so comments and strings that span
 * lines are coloured right.
 */
export function highlight(text, lang) {
  const lines = [];
  let cur = '';
  const put = (s, cls) => {
    const parts = s.split('\n');
    for (let i = 0; i < parts.length; i++) {
      if (i > 0) {
        lines.push(cur);
        cur = '';
      }
      if (parts[i]) cur += cls ? `<span class="t-${cls}">${esc(parts[i])}</span>` : esc(parts[i]);
    }
  };
  if (!lang) {
    put(text, null);
    lines.push(cur);
    return lines;
  }
  const re = lang === 'rust' ? RUST_RE : C_RE;
  re.lastIndex = 0;
  let last = 0;
  let m;
  while ((m = re.exec(text)) !== null) {
    if (m[0] === '') {
      re.lastIndex++;
      continue;
    }
    if (m.index > last) put(text.slice(last, m.index), null);
    const tok = m.groups.id !== undefined ? m.groups.id + (m.groups.bang || '') : m[0];
    put(tok, classify(lang, m.groups));
    last = m.index + tok.length;
    re.lastIndex = last;
  }
  if (last < text.length) put(text.slice(last), null);
  lines.push(cur);
  return lines;
}

/**
 * The function whose signature is at or above `line` (1-based) in `text`, with its
 * parameter names: {name, line, params}. Used by the "trace arguments" template.
 */
export function enclosingFunction(lines, line, lang) {
  const re = lang === 'rust'
    ? /\bfn\s+([A-Za-z_]\w*)\s*(?:<[^>]*>)?\s*\(([^)]*)\)?/
    : /^\s*(?:[\w:*&<>,\s]+\s+[*&]*)?([A-Za-z_]\w*(?:::\w+)*)\s*\(([^;)]*)\)?\s*(?:const\s*)?(?:\{|$)/;
  for (let i = Math.min(line, lines.length) - 1; i >= 0 && i >= line - 400; i--) {
    const m = re.exec(lines[i]);
    if (!m || (lang !== 'rust' && /^(if|for|while|switch|return|else)$/.test(m[1]))) continue;
    const params = [];
    for (const p of m[2].split(',')) {
      const s = p.trim();
      if (!s) continue;
      if (lang === 'rust') {
        const self = /^&?\s*(?:'\w+\s+)?(?:mut\s+)?self$/.exec(s);
        if (self) params.push('self');
        else {
          const n = /^(?:mut\s+)?([A-Za-z_]\w*)\s*:/.exec(s);
          if (n) params.push(n[1]);
        }
      } else {
        const n = /([A-Za-z_]\w*)\s*(?:\[[^\]]*\])?$/.exec(s);
        if (n && n[1] !== 'void') params.push(n[1]);
      }
    }
    return { name: m[1], line: i + 1, params };
  }
  return null;
}
