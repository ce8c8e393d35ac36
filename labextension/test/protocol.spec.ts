/**
 * Model summaries from the kernel (`ModelRecord.summary()`), old and new: engine, real bytes,
 * context, threads and the last generation's statistics.
 */
import {
  cancelRoute,
  parseGeneration,
  parseJob,
  parseKernelMessage,
  parseModel,
  parseServer
} from '../src/protocol';

/** A summary as kernels before llama.cpp support sent it. */
const OLD = {
  alias: 'tiny',
  task: 'causal-lm',
  source: '/tmp/tiny',
  state: 'ready',
  dtype: 'float32',
  device: 'cpu',
  params: 1000,
  estimated_bytes: 4000,
  bytes: { cpu: 4000 },
  pinned: false,
  users: 0,
  use_count: 0,
  keep_alive: null,
  last_used: 0,
  load_s: 0.5,
  labels: null,
  quantization: null,
  home_device: 'cpu',
  training: null,
  expires_at: null
};

/** A llama.cpp model after one chat call, as `ModelRecord.summary()` sends it now. */
const LLAMA = {
  ...OLD,
  alias: 'qwen',
  source: '/models/qwen2.5-0.5b-q4_k_m.gguf',
  dtype: 'gguf',
  quantization: 'gguf',
  bytes: { cpu: 491_400_032 },
  engine: 'llama.cpp',
  real_bytes: { cpu: 612_368_384 },
  n_ctx: 4096,
  threads: 8,
  last_generation: {
    engine: 'llama.cpp',
    prompt_tokens: 31,
    completion_tokens: 42,
    ttft_s: 0.051,
    total_s: 0.469,
    finish_reason: 'stop',
    capped_from: null,
    tokens_per_s: 98.09
  }
};

describe('parseModel', () => {
  it('reads an old summary without the new fields: transformers, no real bytes, nulls', () => {
    expect(parseModel(OLD)).toEqual({
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
    });
  });

  it('reads engine, real bytes, context, threads and the last generation', () => {
    expect(parseModel(LLAMA)).toMatchObject({
      alias: 'qwen',
      dtype: 'gguf',
      bytes: { cpu: 491_400_032 },
      engine: 'llama.cpp',
      realBytes: { cpu: 612_368_384 },
      nCtx: 4096,
      threads: 8,
      lastGeneration: {
        engine: 'llama.cpp',
        promptTokens: 31,
        completionTokens: 42,
        ttftS: 0.051,
        totalS: 0.469,
        finishReason: 'stop',
        tokensPerS: 98.09
      }
    });
  });

  it('reads a transformers model with an empty real_bytes and no generation yet', () => {
    const m = parseModel({
      ...OLD,
      engine: 'transformers',
      real_bytes: {},
      n_ctx: 2048,
      threads: null,
      last_generation: null
    });
    expect(m).toMatchObject({
      engine: 'transformers',
      realBytes: {},
      nCtx: 2048,
      threads: null,
      lastGeneration: null
    });
  });

  it('takes the model engine for a generation that does not name one', () => {
    const m = parseModel({ ...LLAMA, last_generation: { tokens: 42, tokens_per_s: 98.09 } });
    expect(m?.lastGeneration).toMatchObject({
      engine: 'llama.cpp',
      completionTokens: 42,
      tokensPerS: 98.09
    });
  });

  it('cleans odd values of the new fields', () => {
    const m = parseModel({
      ...OLD,
      engine: null,
      real_bytes: { cpu: 'lots', 'cuda:0': 5000 },
      n_ctx: '4k',
      threads: Number.NaN,
      last_generation: 'fast'
    });
    expect(m).toMatchObject({
      engine: 'transformers',
      realBytes: { 'cuda:0': 5000 },
      nCtx: null,
      threads: null,
      lastGeneration: null
    });
    expect(parseModel({ ...OLD, engine: '', real_bytes: [1, 2] })).toMatchObject({
      engine: 'transformers',
      realBytes: {}
    });
  });
});

describe('parseGeneration', () => {
  it('tolerates missing fields and the short `tokens` name', () => {
    expect(
      parseGeneration({
        tokens: 12,
        tokens_per_s: 0,
        ttft_s: null,
        engine: 'transformers',
        finish_reason: 'length'
      })
    ).toEqual({
      engine: 'transformers',
      promptTokens: null,
      completionTokens: 12,
      ttftS: null,
      totalS: null,
      finishReason: 'length',
      tokensPerS: 0
    });
    expect(parseGeneration({})).toEqual({
      engine: '',
      promptTokens: null,
      completionTokens: null,
      ttftS: null,
      totalS: null,
      finishReason: '',
      tokensPerS: null
    });
    expect(parseGeneration(null)).toBeNull();
    expect(parseGeneration([42])).toBeNull();
  });
});

describe('parseJob', () => {
  it('reads the world size and ranks alive of a distributed job, and defaults them for a kernel job', () => {
    const base = {
      id: 3,
      kind: 'finetune',
      target: 'minilm',
      state: 'running',
      progress: 0.5,
      step: 4,
      total_steps: 8
    };
    expect(
      parseJob({ ...base, world_size: 2, ranks_alive: 1, launcher: 'torchrun' })
    ).toMatchObject({
      id: '3',
      worldSize: 2,
      ranksAlive: 1,
      launcher: 'torchrun'
    });
    expect(parseJob(base)).toMatchObject({ worldSize: 1, ranksAlive: null, launcher: '' });
    expect(parseJob({ ...base, world_size: 0, ranks_alive: 'x' })).toMatchObject({
      worldSize: 1,
      ranksAlive: null
    });
  });
});

describe('state messages', () => {
  it('carry old and new model summaries side by side', () => {
    const msg = parseKernelMessage({
      type: 'state',
      version: 1,
      seq: 1,
      models: [OLD, LLAMA],
      jobs: [],
      datasets: []
    });
    expect(msg?.type).toBe('state');
    const models = msg?.type === 'state' ? msg.models : [];
    expect(models.map(m => [m.alias, m.engine, m.lastGeneration?.tokensPerS ?? null])).toEqual([
      ['tiny', 'transformers', null],
      ['qwen', 'llama.cpp', 98.09]
    ]);
  });
});

describe('cancelRoute', () => {
  const job = (over: Record<string, unknown> = {}) =>
    parseJob({
      id: 'job-3',
      kind: 'finetune',
      target: 'tiny',
      state: 'running',
      progress: 0.4,
      ...over
    })!;

  it('reads foreground from the job summary (false when the kernel does not say)', () => {
    expect(job({ foreground: true }).foreground).toBe(true);
    expect(job().foreground).toBe(false);
    expect(job({ foreground: 'yes' }).foreground).toBe(false);
  });

  it('interrupts the kernel only for a running foreground job in a busy kernel without a subshell', () => {
    expect(cancelRoute(job({ foreground: true }), { busy: true, commOnSubshell: false })).toBe(
      'interrupt'
    );
  });

  it.each([
    ['background job, busy kernel', { foreground: false }, { busy: true, commOnSubshell: false }],
    [
      'foreground job, comm on a subshell',
      { foreground: true },
      { busy: true, commOnSubshell: true }
    ],
    ['foreground job, idle kernel', { foreground: true }, { busy: false, commOnSubshell: false }],
    [
      'queued foreground job',
      { foreground: true, state: 'queued' },
      { busy: true, commOnSubshell: false }
    ],
    [
      'finished foreground job',
      { foreground: true, state: 'done' },
      { busy: true, commOnSubshell: false }
    ]
  ])('sends a comm message for a %s', (_, over, context) => {
    expect(cancelRoute(job(over), context)).toBe('comm');
  });
});

describe('parseServer', () => {
  const SERVER = {
    url: 'http://127.0.0.1:8765',
    base_url: 'http://127.0.0.1:8765/v1',
    models: ['smol', 'minilm'],
    requests: 12,
    failed: 1,
    in_flight: 2,
    queued: 3,
    tokens_per_s: 41.5,
    completion_tokens: 900
  };

  it('reads the server of a state message, and null when none runs or the kernel is older', () => {
    const base = {
      version: 1,
      type: 'state',
      seq: 4,
      models: [],
      jobs: [],
      datasets: [],
      hardware: null
    };
    expect(parseKernelMessage({ ...base, server: SERVER })).toMatchObject({
      server: {
        url: 'http://127.0.0.1:8765',
        baseUrl: 'http://127.0.0.1:8765/v1',
        models: ['smol', 'minilm'],
        requests: 12,
        failed: 1,
        inFlight: 2,
        queued: 3,
        tokensPerS: 41.5
      }
    });
    expect(parseKernelMessage({ ...base, server: null })).toMatchObject({ server: null });
    expect(parseKernelMessage(base)).toMatchObject({ server: null });
  });

  it('cleans odd fields: no url is no server, bad counts are 0, base_url defaults', () => {
    expect(parseServer({ models: ['x'] })).toBeNull();
    expect(
      parseServer({
        url: 'http://127.0.0.1:1',
        models: [3, null, 'a'],
        requests: -2,
        in_flight: 'x'
      })
    ).toEqual({
      url: 'http://127.0.0.1:1',
      baseUrl: 'http://127.0.0.1:1/v1',
      models: ['3', 'a'],
      requests: 0,
      failed: 0,
      inFlight: 0,
      queued: 0,
      tokensPerS: null
    });
  });
});
