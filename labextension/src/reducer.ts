/**
 * The panel's state model: a pure reducer from kernel snapshots and panel events.
 *
 * `reduce(state, event)` never mutates `state` and never throws; the React view renders
 * whatever it returns. Tested in `test/reducer.spec.ts`.
 */
import {
  ActionName,
  IDatasetInfo,
  IHardwareInfo,
  IJobInfo,
  IModelInfo,
  IServerInfo,
  parseKernelMessage
} from './protocol';

/**
 * Where the panel stands with the active notebook's kernel.
 *
 * - `no-notebook`: no notebook is open;
 * - `no-kernel`: the notebook has no running kernel;
 * - `connecting`: the comm is opening (a busy kernel answers after the running cell);
 * - `connected`: snapshots are flowing;
 * - `not-loaded`: the kernel refused the comm, so `llmos_jupyter` is not loaded there;
 * - `loading`: the panel is running `%load_ext llmos_jupyter` in the kernel;
 * - `disconnected`: the kernel closed the comm, restarted or died;
 * - `paused`: the user paused updates (the comm is closed; the last data stays on screen).
 */
export type ConnectionStatus =
  | 'no-notebook'
  | 'no-kernel'
  | 'connecting'
  | 'connected'
  | 'not-loaded'
  | 'loading'
  | 'disconnected'
  | 'paused';

export interface IHardwarePoint {
  time: number;
  cpu: number | null;
  gpuUtil: (number | null)[];
}

export interface INotice {
  id: string;
  message: string;
  time: number;
}

export interface IPendingAction {
  action: ActionName;
  target: string;
}

export interface IPanelState {
  connection: ConnectionStatus;
  kernelName: string;
  /** Why the panel is in its connection state, e.g. the `%load_ext` error. */
  detail: string;
  models: IModelInfo[];
  jobs: IJobInfo[];
  datasets: IDatasetInfo[];
  hardware: IHardwareInfo | null;
  /** The kernel's `%llm serve` server, or null when none runs. */
  server: IServerInfo | null;
  /** The last `HISTORY_LENGTH` hardware samples, oldest first. */
  history: IHardwarePoint[];
  /** Sequence number of the last kernel message applied (0 after a (re)connect). */
  seq: number;
  /** Actions sent and not yet answered, by request id. */
  pending: Record<string, IPendingAction>;
  notices: INotice[];
  /** `Date.now()` of the last snapshot or hardware sample. */
  updated: number | null;
}

export const HISTORY_LENGTH = 60;
export const MAX_NOTICES = 5;

export type PanelEvent =
  /** A comm message from the kernel: raw data, validated here. */
  | { kind: 'message'; data: unknown; now?: number }
  | {
      kind: 'connection';
      status: ConnectionStatus;
      kernelName?: string;
      detail?: string;
      /** Another notebook or kernel: drop what is on screen. */
      reset?: boolean;
    }
  /** The notebook was renamed or its kernel's display name changed. */
  | { kind: 'label'; kernelName: string }
  /** The panel sent an action with request id `id`. */
  | { kind: 'action'; id: string; action: ActionName; target: string }
  /** A problem found on the panel side (a failed send, a failed `%load_ext`). */
  | { kind: 'notice'; message: string; now?: number }
  | { kind: 'dismiss'; id: string };

export function initialState(): IPanelState {
  return {
    connection: 'no-notebook',
    kernelName: '',
    detail: '',
    models: [],
    jobs: [],
    datasets: [],
    hardware: null,
    server: null,
    history: [],
    seq: 0,
    pending: {},
    notices: [],
    updated: null
  };
}

let noticeCounter = 0;

function addNotice(state: IPanelState, message: string, now: number): IPanelState {
  const notice = { id: `n${++noticeCounter}`, message, time: now };
  return {
    ...state,
    notices: [...state.notices, notice].slice(-MAX_NOTICES)
  };
}

function withHistory(history: IHardwarePoint[], hw: IHardwareInfo, now: number): IHardwarePoint[] {
  const point = {
    time: now,
    cpu: hw.cpuPercent,
    gpuUtil: hw.gpus.map(g => g.util)
  };
  return [...history, point].slice(-HISTORY_LENGTH);
}

function withoutPending(
  pending: Record<string, IPendingAction>,
  id: string | null
): Record<string, IPendingAction> {
  if (id === null || !(id in pending)) {
    return pending;
  }
  const rest = { ...pending };
  delete rest[id];
  return rest;
}

/** Apply one event to the panel state. */
export function reduce(state: IPanelState, event: PanelEvent): IPanelState {
  switch (event.kind) {
    case 'message':
      return applyMessage(state, event.data, event.now ?? Date.now());
    case 'connection': {
      const kernelName = event.kernelName ?? state.kernelName;
      const next: IPanelState = {
        ...state,
        connection: event.status,
        kernelName,
        detail: event.detail ?? ''
      };
      if (event.status === 'connecting') {
        // A new comm: its snapshots start again at seq 1; old answers will not come.
        next.seq = 0;
        next.pending = {};
      }
      if (
        event.reset ||
        event.status === 'no-notebook' ||
        event.status === 'no-kernel' ||
        event.status === 'not-loaded'
      ) {
        // Nothing on screen may belong to another kernel.
        return {
          ...initialState(),
          connection: event.status,
          kernelName,
          detail: next.detail,
          notices: state.notices
        };
      }
      return next;
    }
    case 'label':
      return event.kernelName === state.kernelName
        ? state
        : { ...state, kernelName: event.kernelName };
    case 'action':
      return {
        ...state,
        pending: {
          ...state.pending,
          [event.id]: { action: event.action, target: event.target }
        }
      };
    case 'notice':
      return addNotice(state, event.message, event.now ?? Date.now());
    case 'dismiss':
      return {
        ...state,
        notices: state.notices.filter(n => n.id !== event.id)
      };
    default:
      return state;
  }
}

function applyMessage(state: IPanelState, data: unknown, now: number): IPanelState {
  if (state.connection === 'paused') {
    return state; // the view is frozen while paused
  }
  const msg = parseKernelMessage(data);
  if (msg === null) {
    return state;
  }
  switch (msg.type) {
    case 'state': {
      if (msg.seq !== 0 && msg.seq <= state.seq) {
        return state; // stale
      }
      const hardware = msg.hardware ?? state.hardware;
      const history =
        msg.hardware && !sameSample(state.hardware, msg.hardware)
          ? withHistory(state.history, msg.hardware, now)
          : state.history;
      return {
        ...state,
        connection: 'connected',
        detail: '',
        seq: msg.seq,
        models: msg.models,
        jobs: msg.jobs,
        datasets: msg.datasets,
        hardware,
        server: msg.server,
        history,
        updated: now
      };
    }
    case 'hardware':
      if (msg.seq !== 0 && msg.seq <= state.seq) {
        return state;
      }
      return {
        ...state,
        connection: 'connected',
        seq: msg.seq,
        hardware: msg.hardware,
        history: withHistory(state.history, msg.hardware, now),
        updated: now
      };
    case 'ack':
      return { ...state, pending: withoutPending(state.pending, msg.id) };
    case 'error': {
      const next = { ...state, pending: withoutPending(state.pending, msg.id) };
      return addNotice(next, msg.message || 'the kernel reported an error', now);
    }
    default:
      return state;
  }
}

/** State pushes repeat the last hardware sample; only count a sample once in the history. */
function sameSample(a: IHardwareInfo | null, b: IHardwareInfo): boolean {
  return (
    a !== null &&
    a.cpuPercent === b.cpuPercent &&
    a.ramUsed === b.ramUsed &&
    a.gpus.length === b.gpus.length &&
    a.gpus.every((g, i) => g.util === b.gpus[i].util && g.memUsed === b.gpus[i].memUsed)
  );
}

/** Is an action on `target` waiting for its answer? */
export function isPending(state: IPanelState, action: ActionName, target: string): boolean {
  return Object.values(state.pending).some(p => p.action === action && p.target === target);
}

/** Jobs that a Cancel button applies to. */
export function isActiveJob(job: IJobInfo): boolean {
  return job.state === 'queued' || job.state === 'running';
}
