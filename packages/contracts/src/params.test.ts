// The edges of the URL parameter types: what they let through must be what JavaScript
// and PostgreSQL both take (e2e/fuzz.test.ts sends the same values through every route).
import { describe, expect, it } from 'vitest';
import { Value } from 'typebox/value';
import { OpaqueId, Position, isTimestamp } from './params.ts';

describe('Timestamp', () => {
  it.each([
    '1970-01-01T00:00:00Z',
    '9999-12-31T23:59:59Z',
    '2024-02-29T12:00:00Z',
    '2026-01-31T12:00:00.123456789+14:59',
    '2026-01-31T12:00:00-14:59',
  ])('takes %s', (text) => {
    expect(isTimestamp(text)).toBe(true);
  });

  it.each([
    ['a suffix', '2026-01-01T00:00:00Zjunk'],
    ['an RFC 9557 suffix', '2026-01-01T00:00:00Z[Europe/Paris]'],
    ['a five-digit year', '99999-01-01T00:00:00Z'],
    ['year 0000', '0000-01-01T00:00:00Z'],
    ['a year before 1970', '1969-12-31T23:59:59Z'],
    ['no such day', '2026-02-29T00:00:00Z'],
    ['month 00', '0000-00-00'],
    ['hour 24', '2026-01-01T24:00:00Z'],
    ['a leap second', '2026-12-31T23:59:60Z'],
    ['an offset past any clock', '2026-01-01T00:00:00+23:59'],
    ['no offset', '2026-01-01T00:00:00'],
    ['a date alone', '2026-01-01'],
    ['a space for T', '2026-01-01 00:00:00Z'],
    ['more than nanoseconds', '2026-01-01T00:00:00.1234567890Z'],
    ['a word PostgreSQL knows', 'infinity'],
  ])('refuses %s', (_, text) => {
    expect(isTimestamp(text)).toBe(false);
  });
});

describe('Position', () => {
  it('takes 0 to 2^53 - 1 and nothing past it', () => {
    expect(Value.Check(Position, 0)).toBe(true);
    expect(Value.Check(Position, Number.MAX_SAFE_INTEGER)).toBe(true);
    expect(Value.Check(Position, Number.MAX_SAFE_INTEGER + 1)).toBe(false);
    expect(Value.Check(Position, 9223372036854775808)).toBe(false);
    expect(Value.Check(Position, -1)).toBe(false);
  });
});

describe('OpaqueId', () => {
  it('takes printable text and refuses control characters', () => {
    expect(Value.Check(OpaqueId, 'c0ffee00-1234-4abc-8def-0123456789ab')).toBe(true);
    expect(Value.Check(OpaqueId, 'saga é 😀')).toBe(true);
    for (const c of ['\u0000', '\u0001', '\n', '\u007f', '\u0085'])
      expect(Value.Check(OpaqueId, `a${c}b`), JSON.stringify(c)).toBe(false);
  });
});
