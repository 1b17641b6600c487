// Structured JSON logs (pino). Every line carries the service name; message handling
// adds correlation and message ids so one order can be followed across services.
import { pino } from 'pino';

export type Fields = Record<string, unknown>;

export type Logger = {
  info(message: string, fields?: Fields): void;
  warn(message: string, fields?: Fields): void;
  error(message: string, fields?: Fields): void;
  child(fields: Fields): Logger;
};

function wrap(base: pino.Logger): Logger {
  return {
    info: (message, fields) => base.info(fields ?? {}, message),
    warn: (message, fields) => base.warn(fields ?? {}, message),
    error: (message, fields) => base.error(fields ?? {}, message),
    child: (fields) => wrap(base.child(fields)),
  };
}

export function createLogger(service: string, level = process.env.LOG_LEVEL ?? 'info'): Logger {
  return wrap(pino({ level, base: { service } }));
}

/** A logger that writes nothing (tests that do not look at logs). */
export const silentLogger: Logger = wrap(pino({ level: 'silent' }));
