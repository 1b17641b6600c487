// Bounded types for what arrives in a URL (path and query parameters). A value a schema
// lets through reaches a handler and then the database, so each type admits only what
// both JavaScript and PostgreSQL hold exactly: an integer past 2^53 is rounded by
// JavaScript and overflows bigint; an RFC 3339 date-time may carry a year 0000, an RFC
// 9557 suffix or a +23:59 offset, none of which timestamptz takes; a NUL in a text
// parameter is an error in PostgreSQL rather than a miss.
import Type from 'typebox';
import { Compile } from 'typebox/compile';

/** A place in an ordered sequence (a feed position, a page offset): exact in JavaScript, within bigint. */
export const Position = Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER });

/**
 * An instant: RFC 3339 with an explicit offset, a real calendar day (the format), a year from 1970 to 9999 and an
 * offset within ±14:59, as clocks have, which keeps it inside what both `Date` and timestamptz accept.
 */
export const Timestamp = Type.String({
  format: 'date-time',
  pattern:
    '^(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])' +
    'T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-4]):[0-5][0-9])$',
  description: 'RFC 3339, e.g. 2026-01-31T12:00:00Z; years 1970 to 9999',
});

const timestamp = Compile(Timestamp);

/** Whether text is a Timestamp: for instants that arrive inside another value (a page cursor). */
export const isTimestamp = (text: string): boolean => timestamp.Check(text);

/** An id a caller or a definition chose (a saga id): printable text, no control characters. */
export const OpaqueId = Type.String({ minLength: 1, maxLength: 200, pattern: '^[^\\u0000-\\u001f\\u007f-\\u009f]+$' });
