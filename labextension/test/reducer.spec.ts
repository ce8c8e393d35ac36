/**
 * The panel's state model: snapshots and events from the kernel folded by `reduce`.
 */
import {
  PanelEvent,
  IPanelState,
  HISTORY_LENGTH,
  initialState,
  isActiveJob,
  isPending,
  reduce
} from '../src/reducer';
import { actionMessage, parseKernelMessage } from '../src/protocol';

const HW = {
  cpu_percent: 12.5,
  ram_used: 3 * 2 ** 30,
  ram_total: 16 * 2 ** 30,
  process_rss: 2 ** 29,
  gpus: [
    {
      index: 0,
      name: 'H200',
      util: 40,
      mem_used: 2 ** 30,
      mem_total: 141 * 2 ** 30,
      temperature: 51,
      power_w: 120
    }
  ]
};

function model(alias: string, extra: Record<string, unknown> = {}) {
  return {
    alias,
    task: 'causal-lm',
    source: `/tmp/${alias}`,
    dtype: 'float32',
    device: 'cpu',
    params: 1000,
    estimated_bytes: 4000,
    bytes: { cpu: 4000 },
    state: 'ready',
    pinned: false,
    keep_alive: null,
    last_used: 0,
    ...extra
  };
}

function job(id: unknown, extra: Record<string, unknown> = {}) {
  return {
    id,
    kind: 'finetune',
    target: 'tiny',
    state: 'running',
    progress: 0.25,
    step: 5,
    total_steps: 20,
    loss: 1.5,
    samples_per_s: 32,
    eta_s: 12,
    ...extra
  };
}

function snapshot(seq: number, extra: Record<string, unknown> = {}) {
  return {
    type: 'state',
    version: 1,
    seq,
    time: 0,
    models: [model('tiny')],
    jobs: [job(7)],
    datasets: [{ name: 'reviews', version: 2, rows: 33530, fingerprint: 'ab12' }],
    hardware: HW,
    ...extra
  };
}

function run(events: PanelEvent[], start: IPanelState = initialState()): IPanelState {
  return events.reduce(reduce, start);
}

const connecting: PanelEvent = {
  kind: 'connection',
  status: 'connecting',
  kernelName: 'nb.ipynb · LLM OS'
};
const msg = (data: unknown, now = 1000): PanelEvent => ({ kind: 'message', data, now });

describe('reduce', () => {
  it('starts with no notebook and nothing to show', () => {
    const s = initialState();
    expect(s.connection).toBe('no-notebook');
    expect(s.models).toEqual([]);
    expect(s.hardware).toBeNull();
  });

  it('applies a snapshot: models, jobs, datasets and hardware, and connects', () => {
    const s = run([connecting, msg(snapshot(1))]);
    expect(s.connection).toBe('connected');
    expect(s.kernelName).toBe('nb.ipynb · LLM OS');
    expect(s.models).toEqual([
      {
        alias: 'tiny',
        task: 'causal-lm',
        source: '/tmp/tiny',
        dtype: 'float32',
        device: 'cpu',
        params: 1000,
        estimatedBytes: 4000,
        bytes: { cpu: 4000 },
        state: 'ready',
        pinned: false,
        engine: 'transformers',
        realBytes: {},
        nCtx: null,
        threads: null,
        lastGeneration: null
      }
    ]);
    expect(s.jobs[0]).toMatchObject({
      id: '7',
      progress: 0.25,
      step: 5,
      totalSteps: 20,
      loss: 1.5,
      samplesPerS: 32,
      etaS: 12
    });
    expect(s.datasets).toEqual([
      { name: 'reviews', version: '2', rows: 33530, fingerprint: 'ab12' }
    ]);
    expect(s.hardware?.gpus[0]).toEqual({
      index: 0,
      name: 'H200',
      util: 40,
      memUsed: 2 ** 30,
      memTotal: 141 * 2 ** 30,
      temperature: 51,
      powerW: 120
    });
    expect(s.history).toHaveLength(1);
    expect(s.hardware?.processRss).toBe(2 ** 29);
    expect(s.updated).toBe(1000);
  });

  it('replaces the whole state with each snapshot (an unloaded model disappears)', () => {
    const s = run([connecting, msg(snapshot(1)), msg(snapshot(2, { models: [] }))]);
    expect(s.models).toEqual([]);
    expect(s.jobs).toHaveLength(1);
  });

  it('moves a job progress bar with successive snapshots', () => {
    const progress = [0.1, 0.4, 0.9].map((p, i) =>
      snapshot(i + 1, { jobs: [job(7, { progress: p, step: i })] })
    );
    const seen: number[] = [];
    let s = run([connecting]);
    for (const p of progress) {
      s = reduce(s, msg(p));
      seen.push(s.jobs[0].progress);
    }
    expect(seen).toEqual([0.1, 0.4, 0.9]);
  });

  it('ignores stale snapshots (lower seq) but accepts seq 1 again after a reconnect', () => {
    let s = run([connecting, msg(snapshot(5)), msg(snapshot(3, { models: [] }))]);
    expect(s.models).toHaveLength(1);
    s = run([connecting, msg(snapshot(1, { models: [] }))], s);
    expect(s.models).toEqual([]);
  });

  it('applies hardware messages and keeps a bounded history', () => {
    let s = run([connecting, msg(snapshot(1))]);
    for (let i = 0; i < HISTORY_LENGTH + 10; i++) {
      s = reduce(
        s,
        msg(
          { type: 'hardware', version: 1, seq: i + 2, hardware: { ...HW, cpu_percent: i } },
          2000 + i
        )
      );
    }
    expect(s.hardware?.cpuPercent).toBe(HISTORY_LENGTH + 9);
    expect(s.history).toHaveLength(HISTORY_LENGTH);
    expect(s.history[s.history.length - 1]).toEqual({
      time: 2000 + HISTORY_LENGTH + 9,
      cpu: HISTORY_LENGTH + 9,
      gpuUtil: [40]
    });
    expect(s.models).toHaveLength(1); // hardware does not touch models
  });

  it('does not count the hardware repeated in state pushes twice in the history', () => {
    const s = run([connecting, msg(snapshot(1)), msg(snapshot(2)), msg(snapshot(3))]);
    expect(s.history).toHaveLength(1);
  });

  it('tracks an action until its ack', () => {
    let s = run([
      connecting,
      msg(snapshot(1)),
      { kind: 'action', id: 'a1', action: 'unload', target: 'tiny' }
    ]);
    expect(isPending(s, 'unload', 'tiny')).toBe(true);
    expect(isPending(s, 'unload', 'other')).toBe(false);
    s = reduce(s, msg({ type: 'ack', version: 1, action: 'unload', target: 'tiny', id: 'a1' }));
    expect(isPending(s, 'unload', 'tiny')).toBe(false);
    expect(s.notices).toEqual([]);
  });

  it('turns an error reply into a notice and clears its pending action', () => {
    let s = run([
      connecting,
      msg(snapshot(1)),
      { kind: 'action', id: 'a2', action: 'cancel', target: '9' }
    ]);
    s = reduce(
      s,
      msg(
        {
          type: 'error',
          version: 1,
          message: "unknown job '9'",
          action: 'cancel',
          target: '9',
          id: 'a2'
        },
        5
      )
    );
    expect(s.pending).toEqual({});
    expect(s.notices).toEqual([{ id: expect.any(String), message: "unknown job '9'", time: 5 }]);
    s = reduce(s, { kind: 'dismiss', id: s.notices[0].id });
    expect(s.notices).toEqual([]);
  });

  it('keeps at most 5 notices', () => {
    let s = initialState();
    for (let i = 0; i < 8; i++) {
      s = reduce(s, { kind: 'notice', message: `n${i}` });
    }
    expect(s.notices.map(n => n.message)).toEqual(['n3', 'n4', 'n5', 'n6', 'n7']);
  });

  it('ignores malformed and unknown messages without throwing', () => {
    const start = run([connecting, msg(snapshot(1))]);
    const bad: unknown[] = [
      null,
      42,
      'state',
      [],
      {},
      { type: 'state' },
      { type: 'state', version: 2, seq: 9 },
      { type: 'teleport', version: 1 },
      { type: 'hardware', version: 1, seq: 4, hardware: 'hot' }
    ];
    for (const data of bad) {
      expect(reduce(start, msg(data))).toBe(start);
    }
  });

  it('drops entries without a name and cleans odd fields', () => {
    const s = run([
      connecting,
      msg(
        snapshot(1, {
          models: [
            model(''),
            { nope: 1 },
            model('ok', { bytes: { cpu: 'many', 'cuda:0': 2048 }, params: 'x', pinned: 'yes' })
          ],
          jobs: [job(null), job('j', { progress: 7, loss: null, eta_s: 'soon' })],
          datasets: [{ rows: 3 }, { name: 'd', rows: null }],
          hardware: { gpus: [null, { name: 'A' }] }
        })
      )
    ]);
    expect(s.models.map(m => m.alias)).toEqual(['ok']);
    expect(s.models[0]).toMatchObject({ bytes: { 'cuda:0': 2048 }, params: null, pinned: false });
    expect(s.jobs).toEqual([
      expect.objectContaining({ id: 'j', progress: 1, loss: null, etaS: null })
    ]);
    expect(s.datasets).toEqual([{ name: 'd', version: '', rows: null, fingerprint: '' }]);
    expect(s.hardware).toEqual({
      cpuPercent: null,
      ramUsed: null,
      ramTotal: null,
      processRss: null,
      error: '',
      gpus: [
        {
          index: 1,
          name: 'A',
          util: null,
          memUsed: null,
          memTotal: null,
          temperature: null,
          powerW: null
        }
      ]
    });
  });

  it('clears everything when the notebook changes to a kernel without llmos', () => {
    const s = run([
      connecting,
      msg(snapshot(1)),
      { kind: 'connection', status: 'not-loaded', kernelName: 'other.ipynb · Python 3' }
    ]);
    expect(s.connection).toBe('not-loaded');
    expect(s.models).toEqual([]);
    expect(s.hardware).toBeNull();
  });

  it('keeps the last data on screen (stale) when the kernel disconnects, and freezes while paused', () => {
    let s = run([
      connecting,
      msg(snapshot(1)),
      { kind: 'connection', status: 'disconnected', detail: 'the kernel restarted' }
    ]);
    expect(s.models).toHaveLength(1);
    expect(s.detail).toBe('the kernel restarted');
    s = reduce(s, { kind: 'connection', status: 'paused' });
    expect(reduce(s, msg(snapshot(9, { models: [] })))).toBe(s);
  });

  it('drops the old data when connecting to another notebook or kernel, not on a rename', () => {
    let s = run([
      connecting,
      msg(snapshot(1)),
      { kind: 'label', kernelName: 'renamed.ipynb · LLM OS' }
    ]);
    expect(s.kernelName).toBe('renamed.ipynb · LLM OS');
    expect(s.models).toHaveLength(1);
    s = reduce(s, {
      kind: 'connection',
      status: 'connecting',
      kernelName: 'b.ipynb · LLM OS',
      reset: true
    });
    expect(s.models).toEqual([]);
    expect(s.connection).toBe('connecting');
  });

  it('forgets pending actions of an old comm when reconnecting', () => {
    let s = run([
      connecting,
      msg(snapshot(1)),
      { kind: 'action', id: 'a1', action: 'unload', target: 'tiny' }
    ]);
    s = reduce(s, connecting);
    expect(s.pending).toEqual({});
    expect(s.seq).toBe(0);
  });
});

describe('server', () => {
  const SERVER = {
    url: 'http://127.0.0.1:8765',
    base_url: 'http://127.0.0.1:8765/v1',
    models: ['smol'],
    requests: 3,
    failed: 0,
    in_flight: 1,
    queued: 2,
    tokens_per_s: 55
  };

  it('shows the server of each snapshot and drops it when the next has none', () => {
    const s1 = run([connecting, msg(snapshot(1, { server: SERVER }))]);
    expect(s1.server).toEqual({
      url: 'http://127.0.0.1:8765',
      baseUrl: 'http://127.0.0.1:8765/v1',
      models: ['smol'],
      requests: 3,
      failed: 0,
      inFlight: 1,
      queued: 2,
      tokensPerS: 55
    });
    const s2 = run([msg(snapshot(2, { server: { ...SERVER, requests: 4, in_flight: 0 } }))], s1);
    expect(s2.server).toMatchObject({ requests: 4, inFlight: 0 });
    expect(run([msg(snapshot(3, { server: null }))], s2).server).toBeNull();
  });

  it('tracks a stop-server action until its ack, and forgets the server with another kernel', () => {
    const s = run([
      connecting,
      msg(snapshot(1, { server: SERVER })),
      { kind: 'action', id: 'a1', action: 'stop-server', target: '' }
    ]);
    expect(isPending(s, 'stop-server', '')).toBe(true);
    const acked = run(
      [msg({ type: 'ack', version: 1, action: 'stop-server', target: '', id: 'a1' })],
      s
    );
    expect(isPending(acked, 'stop-server', '')).toBe(false);
    expect(run([{ kind: 'connection', status: 'not-loaded' }], acked).server).toBeNull();
  });
});

describe('protocol helpers', () => {
  it('builds action messages the kernel validates', () => {
    expect(actionMessage('unload', 'tiny', 'a1')).toEqual({
      type: 'action',
      action: 'unload',
      target: 'tiny',
      id: 'a1'
    });
  });

  it('parses replies, with ids as strings', () => {
    expect(
      parseKernelMessage({
        type: 'error',
        version: 1,
        message: 'm',
        action: 'x',
        target: null,
        id: 3
      })
    ).toEqual({ type: 'error', message: 'm', action: 'x', target: '', id: '3' });
  });

  it('knows which jobs can be cancelled', () => {
    const states = ['queued', 'running', 'done', 'failed', 'cancelled', 'interrupted'];
    const active = states.filter(state =>
      isActiveJob({ ...run([connecting, msg(snapshot(1))]).jobs[0], state })
    );
    expect(active).toEqual(['queued', 'running']);
  });
});
