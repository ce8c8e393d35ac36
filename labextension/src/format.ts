/**
 * Number formatting for the panel: sizes in binary units (KiB, MiB, GiB: 1 GiB = 2^30 bytes,
 * as `torch.cuda.memory_allocated` and NVML count), durations, percentages, decode speeds.
 */

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** `formatBytes(1536) === '1.5 KiB'`; null or negative gives an em dash. */
export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n) || n < 0) {
    return '—';
  }
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} ${UNITS[unit]}`;
}

/** Bytes per device as `cpu 1.2 GiB · cuda:0 3.0 GiB`, largest first. */
export function formatDeviceBytes(bytes: Record<string, number>): string {
  const entries = Object.entries(bytes).filter(([, n]) => n > 0);
  if (entries.length === 0) {
    return '—';
  }
  entries.sort((a, b) => b[1] - a[1]);
  return entries.map(([d, n]) => `${d} ${formatBytes(n)}`).join(' · ');
}

export function totalBytes(bytes: Record<string, number>): number {
  return Object.values(bytes).reduce((a, b) => a + b, 0);
}

/**
 * What a model costs per device, as the kernel's manager counts it: the measured real bytes
 * where there are some, else the tensor bytes.
 */
export function costBytes(
  realBytes: Record<string, number>,
  tensorBytes: Record<string, number>
): Record<string, number> {
  const out: Record<string, number> = {};
  for (const device of new Set([...Object.keys(tensorBytes), ...Object.keys(realBytes)])) {
    const real = realBytes[device] ?? 0;
    out[device] = real > 0 ? real : (tensorBytes[device] ?? 0);
  }
  return out;
}

/** Decode speed as `98.1 tok/s`; null, 0 (fewer than 2 tokens) or negative give an em dash. */
export function formatTokensPerS(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x) || x <= 0) {
    return '—';
  }
  return `${x.toFixed(1)} tok/s`;
}

/** A serving engine's context and threads as `ctx 4096 · 8 threads`; '' when neither is known. */
export function formatEngineDetail(
  nCtx: number | null | undefined,
  threads: number | null | undefined
): string {
  const parts: string[] = [];
  if (nCtx !== null && nCtx !== undefined && Number.isFinite(nCtx) && nCtx > 0) {
    parts.push(`ctx ${nCtx}`);
  }
  if (threads !== null && threads !== undefined && Number.isFinite(threads) && threads > 0) {
    parts.push(threads === 1 ? '1 thread' : `${threads} threads`);
  }
  return parts.join(' · ');
}

/**
 * A server's load as `12 served · 1 failed · 2 in flight · 3 queued · 41.5 tok/s` (failed, and
 * the speed, only when there are some).
 */
export function formatServerLoad(s: {
  requests: number;
  failed: number;
  inFlight: number;
  queued: number;
  tokensPerS: number | null;
}): string {
  const parts = [`${s.requests} served`];
  if (s.failed > 0) {
    parts.push(`${s.failed} failed`);
  }
  parts.push(`${s.inFlight} in flight`, `${s.queued} queued`);
  const speed = formatTokensPerS(s.tokensPerS);
  if (speed !== '—') {
    parts.push(speed);
  }
  return parts.join(' · ');
}

/** Seconds as `42s`, `3m 05s`, `2h 07m`. */
export function formatDuration(s: number | null | undefined): string {
  if (s === null || s === undefined || !Number.isFinite(s) || s < 0) {
    return '—';
  }
  const total = Math.round(s);
  if (total < 60) {
    return `${total}s`;
  }
  const m = Math.floor(total / 60);
  if (m < 60) {
    return `${m}m ${String(total % 60).padStart(2, '0')}s`;
  }
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, '0')}m`;
}

/** 0..100 as `42%`. */
export function formatPercent(p: number | null | undefined): string {
  if (p === null || p === undefined || !Number.isFinite(p)) {
    return '—';
  }
  return `${Math.round(p)}%`;
}

/** A loss or a rate: 4 significant digits. */
export function formatNumber(x: number | null | undefined, digits = 4): string {
  if (x === null || x === undefined || !Number.isFinite(x)) {
    return '—';
  }
  return Number(x.toPrecision(digits)).toString();
}

/** Share of `used` in `total` as 0..100, or null. */
export function share(used: number | null, total: number | null): number | null {
  if (used === null || total === null || total <= 0) {
    return null;
  }
  return Math.min(Math.max((100 * used) / total, 0), 100);
}
