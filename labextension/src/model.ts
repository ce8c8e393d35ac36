/**
 * The panel's model: follows one notebook's session, keeps a comm `llmos` open to its kernel,
 * folds what arrives into an `IPanelState` with `reduce`, and emits `stateChanged`.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { ActionName, COMM_TARGET, PROTOCOL_VERSION, actionMessage, cancelRoute } from './protocol';
import { ConnectionStatus, IPanelState, PanelEvent, initialState, reduce } from './reducer';

/** The code the "Load" button runs in the kernel. */
export const LOAD_EXTENSION_CODE = '%load_ext llmos_jupyter';

/** The part of a document context the panel uses: its path, which changes on rename. */
export interface IDocumentPath {
  readonly path: string;
  readonly pathChanged: ISignal<unknown, string>;
}

export interface IPanelSettings {
  /** Seconds between hardware samples (the kernel clamps to 0.5 .. 60). */
  refreshInterval: number;
  /** Closes the comm: no updates, no work in the kernel. */
  paused: boolean;
}

export const DEFAULT_SETTINGS: IPanelSettings = {
  refreshInterval: 2,
  paused: false
};

/** Code whose execution may have loaded llmos in the kernel: then the panel tries again. */
const MAY_LOAD = /llmos|%llm\b/;

export class LLMOSModel {
  get state(): IPanelState {
    return this._state;
  }

  get stateChanged(): ISignal<this, IPanelState> {
    return this._stateChanged;
  }

  get settings(): IPanelSettings {
    return this._settings;
  }

  get sessionContext(): ISessionContext | null {
    return this._context;
  }

  /** Apply an event to the state (also used by tests and the view). */
  dispatch(event: PanelEvent): void {
    const next = reduce(this._state, event);
    if (next !== this._state) {
      this._state = next;
      this._stateChanged.emit(next);
    }
  }

  /**
   * Follow another notebook's session (or none). `document`, the notebook's document context,
   * gives the file name shown in the header (it follows renames).
   */
  setSessionContext(context: ISessionContext | null, document?: IDocumentPath | null): void {
    if (context === this._context) {
      return;
    }
    if (this._context) {
      this._context.kernelChanged.disconnect(this._onKernelChanged, this);
      this._context.statusChanged.disconnect(this._onStatus, this);
      this._context.propertyChanged.disconnect(this._onRename, this);
    }
    this._document?.pathChanged.disconnect(this._onRename, this);
    this._watchKernel(null);
    this._closeComm();
    this._context = context;
    this._document = context ? (document ?? null) : null;
    if (context) {
      context.kernelChanged.connect(this._onKernelChanged, this);
      context.statusChanged.connect(this._onStatus, this);
      context.propertyChanged.connect(this._onRename, this);
    }
    this._document?.pathChanged.connect(this._onRename, this);
    this._watchKernel(this._kernel());
    this._reset = true;
    void this.connect();
  }

  /** Apply new settings; reconnects when the interval or pause changed. */
  setSettings(settings: Partial<IPanelSettings>): void {
    const next = { ...this._settings, ...settings };
    const changed =
      next.paused !== this._settings.paused ||
      next.refreshInterval !== this._settings.refreshInterval;
    this._settings = next;
    if (changed) {
      this._closeComm();
      void this.connect();
    }
  }

  /**
   * Pause or resume from the panel's button: saved through `persist` (the settings registry,
   * whose change comes back through `setSettings`) when there is one, else applied directly.
   */
  requestPause(paused: boolean): void {
    if (this.persist) {
      this.persist({ paused }).catch(() => this.setSettings({ paused }));
    } else {
      this.setSettings({ paused });
    }
  }

  /** Saves a settings change (set by the plugin when the settings registry is available). */
  persist: ((settings: Partial<IPanelSettings>) => Promise<void>) | null = null;

  /** Open the comm to the current kernel (closing any previous one). */
  async connect(): Promise<void> {
    const context = this._context;
    if (!context) {
      this._status('no-notebook');
      return;
    }
    const kernel = this._kernel();
    const kernelName = this._kernelLabel();
    if (this._settings.paused) {
      this._closeComm();
      this.dispatch({ kind: 'connection', status: 'paused', kernelName, reset: this._reset });
      this._reset = false;
      return;
    }
    if (!kernel || kernel.status === 'dead') {
      this._status('no-kernel');
      return;
    }
    this._closeComm();
    const token = ++this._attempt;
    this._gotMessage = false;
    this.dispatch({ kind: 'connection', status: 'connecting', kernelName, reset: this._reset });
    this._reset = false;
    let comm: Kernel.IComm;
    try {
      comm = kernel.createComm(COMM_TARGET);
    } catch (reason) {
      this._status('disconnected', String(reason));
      return;
    }
    this._comm = comm;
    comm.onMsg = (msg: KernelMessage.ICommMsgMsg) => {
      if (token !== this._attempt) {
        return;
      }
      this._gotMessage = true;
      this.dispatch({ kind: 'message', data: msg.content.data });
    };
    comm.onClose = () => {
      if (token !== this._attempt) {
        return;
      }
      this._comm = null;
      // A kernel without the target closes the comm at once, before any message.
      this._status(this._gotMessage ? 'disconnected' : 'not-loaded');
    };
    try {
      await comm.open({
        version: PROTOCOL_VERSION,
        hardware_interval_s: this._settings.refreshInterval
      }).done;
    } catch (reason) {
      if (token === this._attempt && this._state.connection === 'connecting') {
        this._status('disconnected', String(reason));
      }
    }
  }

  /** Ask the kernel to unload a model, cancel a job, or send a fresh snapshot. */
  act(action: ActionName, target = ''): void {
    const comm = this._comm;
    if (!comm || comm.isDisposed) {
      this.dispatch({
        kind: 'notice',
        message: `cannot ${action}: the panel is not connected to a kernel with llmos loaded`
      });
      return;
    }
    if (action === 'cancel' && this._interruptFor(target)) {
      return;
    }
    const id = `a${++this._requests}`;
    this.dispatch({ kind: 'action', id, action, target });
    try {
      comm.send({ ...actionMessage(action, target, id) });
    } catch (reason) {
      this.dispatch({
        kind: 'message',
        data: {
          type: 'error',
          version: PROTOCOL_VERSION,
          id,
          action,
          target,
          message: `${action} not sent: ${reason}`
        }
      });
    }
  }

  /**
   * Cancel a foreground job whose kernel cannot read the panel's messages while it runs (no
   * subshell for the comm): send the kernel interrupt. True when it did (see `cancelRoute`).
   */
  private _interruptFor(target: string): boolean {
    const kernel = this._kernel();
    const job = this._state.jobs.find(j => j.id === target);
    const comm = this._comm as (Kernel.IComm & { subshellId?: string | null }) | null;
    if (!kernel || !job) {
      return false;
    }
    const route = cancelRoute(job, {
      busy: kernel.status === 'busy',
      commOnSubshell: Boolean(comm?.subshellId)
    });
    if (route !== 'interrupt') {
      return false;
    }
    this.dispatch({
      kind: 'notice',
      message: `interrupting the kernel: ${job.id} runs in the foreground and stops at its next step`
    });
    kernel.interrupt().catch(reason => {
      this.dispatch({ kind: 'notice', message: `cannot interrupt the kernel: ${reason}` });
    });
    return true;
  }

  /** Run `%load_ext llmos_jupyter` in the kernel, then connect. */
  async loadExtension(): Promise<void> {
    const kernel = this._kernel();
    if (!kernel) {
      this._status('no-kernel');
      return;
    }
    this._status('loading');
    let error = '';
    try {
      const future = kernel.requestExecute({
        code: LOAD_EXTENSION_CODE,
        silent: false,
        store_history: false,
        stop_on_error: false
      });
      future.onIOPub = msg => {
        if (KernelMessage.isErrorMsg(msg)) {
          error = `${msg.content.ename}: ${msg.content.evalue}`;
        } else if (KernelMessage.isStreamMsg(msg) && msg.content.name === 'stderr') {
          error = error || msg.content.text.trim();
        }
      };
      const reply = await future.done;
      if (reply.content.status !== 'ok' && !error) {
        error = `%load_ext failed (${reply.content.status})`;
      }
    } catch (reason) {
      error = String(reason);
    }
    if (error) {
      this._status(
        'not-loaded',
        `${error}. Is llmos-jupyter installed in this kernel's environment? ` +
          'The "LLM OS (Python 3)" kernel loads it at start.'
      );
      return;
    }
    await this.connect();
  }

  dispose(): void {
    this.setSessionContext(null);
    Signal.clearData(this);
  }

  private _kernel(): Kernel.IKernelConnection | null {
    return this._context?.session?.kernel ?? null;
  }

  private _kernelLabel(): string {
    const context = this._context;
    if (!context) {
      return '';
    }
    const name = context.kernelDisplayName || context.session?.kernel?.name || '';
    const file = (this._document?.path || context.path || context.name).split('/').pop();
    return `${file} · ${name}`;
  }

  private _status(status: ConnectionStatus, detail = ''): void {
    this.dispatch({
      kind: 'connection',
      status,
      kernelName: this._kernelLabel(),
      detail
    });
  }

  private _closeComm(): void {
    this._attempt++; // late callbacks of the old comm are ignored
    const comm = this._comm;
    this._comm = null;
    if (comm && !comm.isDisposed) {
      try {
        comm.close();
      } catch {
        // the kernel is gone; nothing to close
      }
    }
  }

  private _onKernelChanged(): void {
    this._watchKernel(this._kernel());
    this._closeComm();
    this._reset = true;
    void this.connect();
  }

  private _onRename(): void {
    this.dispatch({ kind: 'label', kernelName: this._kernelLabel() });
  }

  private _onStatus(_: ISessionContext, status: Kernel.Status): void {
    const connection = this._state.connection;
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._closeComm();
      this._status(status === 'dead' ? 'no-kernel' : 'disconnected', 'the kernel restarted');
      this._retryOnIdle = true;
    } else if (status === 'idle' && this._retryOnIdle) {
      this._retryOnIdle = false;
      if (
        connection === 'disconnected' ||
        connection === 'not-loaded' ||
        connection === 'no-kernel'
      ) {
        void this.connect();
      }
    }
  }

  /** Watch executed code: after a cell that may load llmos, try the comm again. */
  private _watchKernel(kernel: Kernel.IKernelConnection | null): void {
    if (this._watched) {
      this._watched.iopubMessage.disconnect(this._onIOPub, this);
    }
    this._watched = kernel;
    if (kernel) {
      kernel.iopubMessage.connect(this._onIOPub, this);
    }
  }

  private _onIOPub(_: Kernel.IKernelConnection, msg: KernelMessage.IIOPubMessage): void {
    if (
      msg.header.msg_type === 'execute_input' &&
      (this._state.connection === 'not-loaded' || this._state.connection === 'disconnected') &&
      MAY_LOAD.test(String((msg.content as { code?: string }).code ?? ''))
    ) {
      this._retryOnIdle = true;
    }
  }

  private _state: IPanelState = initialState();
  private _stateChanged = new Signal<this, IPanelState>(this);
  private _settings: IPanelSettings = { ...DEFAULT_SETTINGS };
  private _context: ISessionContext | null = null;
  private _document: IDocumentPath | null = null;
  private _watched: Kernel.IKernelConnection | null = null;
  private _comm: Kernel.IComm | null = null;
  private _attempt = 0;
  private _requests = 0;
  private _gotMessage = false;
  private _retryOnIdle = false;
  /** The next 'connecting' is for another notebook or kernel. */
  private _reset = true;
}
