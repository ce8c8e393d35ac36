import {
  costBytes,
  formatBytes,
  formatDeviceBytes,
  formatDuration,
  formatEngineDetail,
  formatNumber,
  formatPercent,
  formatServerLoad,
  formatTokensPerS,
  share
} from '../src/format';

describe('format', () => {
  it('formats sizes in binary units', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(538 * 2 ** 20)).toBe('538 MiB');
    expect(formatBytes(12.5 * 2 ** 30)).toBe('12.5 GiB');
    expect(formatBytes(null)).toBe('—');
    expect(formatBytes(-1)).toBe('—');
  });

  it('lists bytes per device, largest first', () => {
    expect(formatDeviceBytes({ cpu: 2 ** 20, 'cuda:0': 3 * 2 ** 30, meta: 0 })).toBe(
      'cuda:0 3.00 GiB · cpu 1.00 MiB'
    );
    expect(formatDeviceBytes({})).toBe('—');
  });

  it('formats durations, percentages and numbers', () => {
    expect(formatDuration(42.4)).toBe('42s');
    expect(formatDuration(185)).toBe('3m 05s');
    expect(formatDuration(7620)).toBe('2h 07m');
    expect(formatDuration(null)).toBe('—');
    expect(formatPercent(41.6)).toBe('42%');
    expect(formatNumber(1.234567)).toBe('1.235');
    expect(formatNumber(Number.NaN)).toBe('—');
    expect(share(1, 4)).toBe(25);
    expect(share(1, 0)).toBeNull();
  });

  it('counts a model at its real bytes where measured, else its tensor bytes', () => {
    expect(costBytes({}, { cpu: 4000 })).toEqual({ cpu: 4000 });
    expect(costBytes({ cpu: 6000 }, { cpu: 4000 })).toEqual({ cpu: 6000 });
    expect(costBytes({ 'cuda:0': 9000, cpu: 0 }, { cpu: 100, 'cuda:0': 8000 })).toEqual({
      cpu: 100,
      'cuda:0': 9000
    });
    expect(costBytes({ cpu: 512 }, {})).toEqual({ cpu: 512 });
    expect(costBytes({}, {})).toEqual({});
    expect(formatDeviceBytes(costBytes({ cpu: 612_368_384 }, { cpu: 491_400_032 }))).toBe(
      'cpu 584 MiB'
    );
  });

  it('formats decode speeds', () => {
    expect(formatTokensPerS(98.09)).toBe('98.1 tok/s');
    expect(formatTokensPerS(1234.56)).toBe('1234.6 tok/s');
    expect(formatTokensPerS(0.04)).toBe('0.0 tok/s');
    expect(formatTokensPerS(0)).toBe('—'); // fewer than 2 tokens: no speed
    expect(formatTokensPerS(null)).toBe('—');
    expect(formatTokensPerS(undefined)).toBe('—');
    expect(formatTokensPerS(Number.POSITIVE_INFINITY)).toBe('—');
  });

  it('formats an engine context and threads', () => {
    expect(formatEngineDetail(4096, 8)).toBe('ctx 4096 · 8 threads');
    expect(formatEngineDetail(2048, null)).toBe('ctx 2048');
    expect(formatEngineDetail(null, 1)).toBe('1 thread');
    expect(formatEngineDetail(null, undefined)).toBe('');
    expect(formatEngineDetail(0, Number.NaN)).toBe('');
  });

  it('formats a server load, with failures and speed only when there are some', () => {
    expect(
      formatServerLoad({ requests: 12, failed: 1, inFlight: 2, queued: 3, tokensPerS: 41.5 })
    ).toBe('12 served · 1 failed · 2 in flight · 3 queued · 41.5 tok/s');
    expect(
      formatServerLoad({ requests: 0, failed: 0, inFlight: 0, queued: 0, tokensPerS: 0 })
    ).toBe('0 served · 0 in flight · 0 queued');
  });
});
