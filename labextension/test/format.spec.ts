import { formatBytes, formatDeviceBytes, formatDuration, formatNumber, formatPercent, share } from '../src/format';

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
    expect(formatDeviceBytes({ cpu: 2 ** 20, 'cuda:0': 3 * 2 ** 30, meta: 0 })).toBe('cuda:0 3.00 GiB · cpu 1.00 MiB');
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
});
