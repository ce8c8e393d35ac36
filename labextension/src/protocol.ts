/**
 * The side-panel protocol (comm target `llmos`), panel side.
 *
 * Mirrors `llmos_jupyter/comm.py`: the kernel sends `state`, `hardware`, `ack` and `error`
 * messages; the panel sends `action` messages. Everything that arrives is checked here and
 * turned into well-typed values, so a bad message can never break the panel.
 */

export const COMM_TARGET = 'llmos';
export const PROTOCOL_VERSION = 1;

export type ModelState = 'loading' | 'ready' | 'offloaded' | 'error' | string;
/** Which engine serves a model's generate/chat calls. */
export type ModelEngine = 'transformers' | 'llama.cpp' | string;
export type JobState =
  'queued' | 'running' | 'done' | 'failed' | 'cancelled' | 'interrupted' | 'diverged' | string;

export interface IModelInfo {
  alias: string;
  task: string;
  source: string;
  dtype: string;
  device: string;
  params: number | null;
  estimatedBytes: number | null;
  /** Tensor bytes per device, e.g. `{cpu: 1024, "cuda:0": 2048}`. */
  bytes: Record<string, number>;
  state: ModelState;
  pinned: boolean;
  /** `transformers` when the kernel does not say (kernels before llama.cpp support). */
  engine: ModelEngine;
  /**
   * What holding the model really costs per device (RSS or CUDA reserved delta, measured at
   * load); `{}` when not measured: then `bytes` is the cost.
   */
  realBytes: Record<string, number>;
  /** Context window (positions) of the serving engine. */
  nCtx: number | null;
  /** llama.cpp decode threads. */
  threads: number | null;
  /** Statistics of the last generate/chat call, or null before the first. */
  lastGeneration: IGenerationInfo | null;
}

export interface IGenerationInfo {
  engine: ModelEngine;
  promptTokens: number | null;
  completionTokens: number | null;
  /** Seconds from the call to the first token (prompt processing included). */
  ttftS: number | null;
  totalS: number | null;
  /** `stop`, `length` or `cancelled`. */
  finishReason: string;
  /** Decode speed (0 when fewer than 2 tokens were generated). */
  tokensPerS: number | null;
}

export interface IJobInfo {
  /** The job id as the panel sends it back (`String(id)`). */
  id: string;
  kind: string;
  target: string;
  state: JobState;
  /** 0..1 */
  progress: number;
  step: number | null;
  totalSteps: number | null;
  loss: number | null;
  samplesPerS: number | null;
  etaS: number | null;
  /** Ranks of a distributed fine-tune (1 for a job in the kernel). */
  worldSize: number;
  /** Ranks alive on this machine (null: not a distributed job, or not started yet). */
  ranksAlive: number | null;
  /** `torchrun` or `accelerate` for a distributed job, '' otherwise. */
  launcher: string;
  /** The job runs in the cell that started it (false when the kernel does not say). */
  foreground: boolean;
}

export interface IDatasetInfo {
  name: string;
  version: string;
  rows: number | null;
  fingerprint: string;
}

export interface IGpuInfo {
  index: number;
  name: string;
  util: number | null;
  memUsed: number | null;
  memTotal: number | null;
  temperature: number | null;
  powerW: number | null;
}

export interface IHardwareInfo {
  cpuPercent: number | null;
  ramUsed: number | null;
  ramTotal: number | null;
  /** Resident memory of the kernel process itself (bytes). */
  processRss: number | null;
  gpus: IGpuInfo[];
  error: string;
}

/** The `%llm serve` server of the kernel (an OpenAI-compatible endpoint); never its token. */
export interface IServerInfo {
  /** `http://127.0.0.1:PORT` */
  url: string;
  /** `url` + `/v1`, what clients take as `base_url`. */
  baseUrl: string;
  /** Aliases served now. */
  models: string[];
  /** Requests answered (2xx) since the server started. */
  requests: number;
  /** Requests answered with an error after they reached a model's queue. */
  failed: number;
  /** Requests decoding now. */
  inFlight: number;
  /** Requests waiting in the models' queues. */
  queued: number;
  /** Completion tokens per second over the last minute. */
  tokensPerS: number | null;
}

export interface IStateMessage {
  type: 'state';
  seq: number;
  models: IModelInfo[];
  jobs: IJobInfo[];
  datasets: IDatasetInfo[];
  hardware: IHardwareInfo | null;
  /** null when no server runs (and from kernels before `%llm serve`). */
  server: IServerInfo | null;
}

export interface IHardwareMessage {
  type: 'hardware';
  seq: number;
  hardware: IHardwareInfo;
}

export interface IReplyMessage {
  type: 'ack' | 'error';
  message: string;
  action: string;
  target: string;
  id: string | null;
}

export type KernelMessage = IStateMessage | IHardwareMessage | IReplyMessage;

export type ActionName = 'unload' | 'cancel' | 'refresh' | 'stop-server';

export interface IActionMessage {
  type: 'action';
  action: ActionName;
  target: string;
  id: string;
}

type Dict = Record<string, unknown>;

function isDict(value: unknown): value is Dict {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function num(value: unknown): number | null {
  return typeof value === 'number' && Number.isFinite(value) ? value : null;
}

function str(value: unknown, fallback = ''): string {
  if (typeof value === 'string') {
    return value;
  }
  if (typeof value === 'number' && Number.isFinite(value)) {
    return String(value);
  }
  return fallback;
}

function list(value: unknown): unknown[] {
  return Array.isArray(value) ? value : [];
}

function bytesPerDevice(value: unknown): Record<string, number> {
  const out: Record<string, number> = {};
  if (isDict(value)) {
    for (const [device, n] of Object.entries(value)) {
      const v = num(n);
      if (v !== null) {
        out[device] = v;
      }
    }
  }
  return out;
}

export function parseGeneration(value: unknown): IGenerationInfo | null {
  if (!isDict(value)) {
    return null;
  }
  return {
    engine: str(value.engine),
    promptTokens: num(value.prompt_tokens),
    completionTokens: num(value.completion_tokens) ?? num(value.tokens),
    ttftS: num(value.ttft_s),
    totalS: num(value.total_s),
    finishReason: str(value.finish_reason),
    tokensPerS: num(value.tokens_per_s)
  };
}

export function parseModel(value: unknown): IModelInfo | null {
  if (!isDict(value) || !str(value.alias)) {
    return null;
  }
  const engine = str(value.engine) || 'transformers';
  const gen = parseGeneration(value.last_generation);
  return {
    alias: str(value.alias),
    task: str(value.task),
    source: str(value.source),
    dtype: str(value.dtype),
    device: str(value.device),
    params: num(value.params),
    estimatedBytes: num(value.estimated_bytes),
    bytes: bytesPerDevice(value.bytes),
    state: str(value.state, 'unknown'),
    pinned: value.pinned === true,
    engine,
    realBytes: bytesPerDevice(value.real_bytes),
    nCtx: num(value.n_ctx),
    threads: num(value.threads),
    lastGeneration: gen && { ...gen, engine: gen.engine || engine }
  };
}

export function parseJob(value: unknown): IJobInfo | null {
  if (!isDict(value) || str(value.id) === '') {
    return null;
  }
  const progress = num(value.progress);
  return {
    id: str(value.id),
    kind: str(value.kind),
    target: str(value.target),
    state: str(value.state, 'unknown'),
    progress: progress === null ? 0 : Math.min(Math.max(progress, 0), 1),
    step: num(value.step),
    totalSteps: num(value.total_steps),
    loss: num(value.loss),
    samplesPerS: num(value.samples_per_s),
    etaS: num(value.eta_s),
    worldSize: Math.max(num(value.world_size) ?? 1, 1),
    ranksAlive: num(value.ranks_alive),
    launcher: str(value.launcher),
    foreground: value.foreground === true
  };
}

/** How a Cancel reaches the kernel: a comm message, or the kernel interrupt. */
export type CancelRoute = 'comm' | 'interrupt';

/** What the panel knows about the kernel when Cancel is pressed. */
export interface ICancelContext {
  /** The kernel is running a cell. */
  busy: boolean;
  /**
   * The panel's comm goes to a kernel subshell (JEP 91; JupyterLab >= 4.4 with ipykernel >= 7),
   * so the kernel handles its messages while a cell runs.
   */
  commOnSubshell: boolean;
}

/**
 * The route of a Cancel of `job`. A comm message normally: the kernel stops the job at its next
 * step. But a foreground job blocks its cell, and without a subshell the kernel reads comm
 * messages only after that cell: then Cancel sends the kernel interrupt (the toolbar's stop
 * button), which the training loop also turns into a stop at the next step.
 */
export function cancelRoute(job: IJobInfo, context: ICancelContext): CancelRoute {
  return job.foreground && job.state === 'running' && context.busy && !context.commOnSubshell
    ? 'interrupt'
    : 'comm';
}

export function parseDataset(value: unknown): IDatasetInfo | null {
  if (!isDict(value) || !str(value.name)) {
    return null;
  }
  return {
    name: str(value.name),
    version: str(value.version),
    rows: num(value.rows),
    fingerprint: str(value.fingerprint)
  };
}

export function parseHardware(value: unknown): IHardwareInfo | null {
  if (!isDict(value)) {
    return null;
  }
  const gpus: IGpuInfo[] = [];
  list(value.gpus).forEach((g, i) => {
    if (isDict(g)) {
      gpus.push({
        index: num(g.index) ?? i,
        name: str(g.name, `GPU ${i}`),
        util: num(g.util),
        memUsed: num(g.mem_used),
        memTotal: num(g.mem_total),
        temperature: num(g.temperature),
        powerW: num(g.power_w)
      });
    }
  });
  return {
    cpuPercent: num(value.cpu_percent),
    ramUsed: num(value.ram_used),
    ramTotal: num(value.ram_total),
    processRss: num(value.process_rss),
    gpus,
    error: str(value.error)
  };
}

export function parseServer(value: unknown): IServerInfo | null {
  if (!isDict(value) || !str(value.url)) {
    return null;
  }
  const count = (v: unknown) => Math.max(num(v) ?? 0, 0);
  return {
    url: str(value.url),
    baseUrl: str(value.base_url) || `${str(value.url)}/v1`,
    models: list(value.models)
      .map(m => str(m))
      .filter(Boolean),
    requests: count(value.requests),
    failed: count(value.failed),
    inFlight: count(value.in_flight),
    queued: count(value.queued),
    tokensPerS: num(value.tokens_per_s)
  };
}

function parsed<T>(items: unknown, parse: (v: unknown) => T | null): T[] {
  const out: T[] = [];
  for (const item of list(items)) {
    const v = parse(item);
    if (v !== null) {
      out.push(v);
    }
  }
  return out;
}

/**
 * Check one comm message from the kernel; return null for anything that is not a protocol
 * message of a version this panel understands.
 */
export function parseKernelMessage(data: unknown): KernelMessage | null {
  if (!isDict(data) || data.version !== PROTOCOL_VERSION) {
    return null;
  }
  const seq = num(data.seq) ?? 0;
  switch (data.type) {
    case 'state':
      return {
        type: 'state',
        seq,
        models: parsed(data.models, parseModel),
        jobs: parsed(data.jobs, parseJob),
        datasets: parsed(data.datasets, parseDataset),
        hardware: parseHardware(data.hardware),
        server: parseServer(data.server)
      };
    case 'hardware': {
      const hardware = parseHardware(data.hardware);
      return hardware ? { type: 'hardware', seq, hardware } : null;
    }
    case 'ack':
    case 'error':
      return {
        type: data.type,
        message: str(data.message),
        action: str(data.action),
        target: str(data.target),
        id: data.id === null || data.id === undefined ? null : str(data.id)
      };
    default:
      return null;
  }
}

/** Build an action message for the kernel. */
export function actionMessage(action: ActionName, target: string, id: string): IActionMessage {
  return { type: 'action', action, target, id };
}
