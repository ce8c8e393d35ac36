/**
 * The side panel's view: React components over `IPanelState`, wrapped in a `ReactWidget`.
 *
 * Every control has an accessible name (`Unload tiny`, `Cancel job 3`, ...) so the UI tests
 * select by role, and all colours come from JupyterLab's theme variables (`style/base.css`).
 */
import { ReactWidget, UseSignal } from '@jupyterlab/ui-components';
import { TranslationBundle } from '@jupyterlab/translation';
import React from 'react';

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
  share,
  totalBytes
} from './format';
import { LLMOSModel } from './model';
import { IDatasetInfo, IGenerationInfo, IGpuInfo, IJobInfo, IModelInfo } from './protocol';
import { IHardwarePoint, IPanelState, isActiveJob, isPending } from './reducer';

export const PANEL_ID = 'llmos-panel';

interface IProps {
  model: LLMOSModel;
  state: IPanelState;
  trans: TranslationBundle;
}

function Bar(props: { value: number | null; label: string; kind?: string }): JSX.Element {
  const v = props.value === null ? 0 : Math.min(Math.max(props.value, 0), 100);
  return (
    <div
      className={`jp-LLMOS-bar ${props.kind ? `jp-LLMOS-bar-${props.kind}` : ''}`}
      role="progressbar"
      aria-label={props.label}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={Math.round(v)}
    >
      <div className="jp-LLMOS-bar-fill" style={{ width: `${v}%` }} />
    </div>
  );
}

/** A small line chart of the last samples (0..100), like nvdashboard's, without a library. */
function Sparkline(props: { values: (number | null)[]; label: string }): JSX.Element | null {
  const points = props.values
    .map((v, i) => (v === null ? null : [i, v]))
    .filter((p): p is number[] => p !== null);
  if (points.length < 2) {
    return null;
  }
  const n = Math.max(props.values.length - 1, 1);
  const d = points
    .map(
      ([i, v], k) =>
        `${k ? 'L' : 'M'}${((100 * i) / n).toFixed(1)},${(30 - (30 * Math.min(v, 100)) / 100).toFixed(1)}`
    )
    .join(' ');
  return (
    <svg
      className="jp-LLMOS-spark"
      viewBox="0 0 100 30"
      preserveAspectRatio="none"
      role="img"
      aria-label={props.label}
    >
      <path d={d} />
    </svg>
  );
}

function Section(props: { title: string; count?: number; children: React.ReactNode }): JSX.Element {
  return (
    <section className="jp-LLMOS-section" aria-label={props.title}>
      <h3 className="jp-LLMOS-sectionTitle">
        {props.title}
        {props.count !== undefined && <span className="jp-LLMOS-count">{props.count}</span>}
      </h3>
      {props.children}
    </section>
  );
}

/** The tooltip of a model's decode speed: tokens, first token, finish reason and engine of its last call. */
function generationTitle(gen: IGenerationInfo, trans: TranslationBundle): string {
  const first = gen.ttftS === null ? '—' : `${gen.ttftS.toFixed(2)} s`;
  const tokens = gen.completionTokens === null ? '—' : String(gen.completionTokens);
  return trans.__(
    'last generation: %1 tokens, first token %2, %3 (%4)',
    tokens,
    first,
    gen.finishReason || '—',
    gen.engine
  );
}

function Models(props: IProps): JSX.Element {
  const { state, model, trans } = props;
  const live = state.connection === 'connected';
  return (
    <Section title={trans.__('Models')} count={state.models.length}>
      {state.models.length === 0 ? (
        <p className="jp-LLMOS-empty">{trans.__('No model loaded. Try %llm load NAME.')}</p>
      ) : (
        <table className="jp-LLMOS-table" aria-label={trans.__('Loaded models')}>
          <thead>
            <tr>
              <th>{trans.__('Model')}</th>
              <th>{trans.__('Memory')}</th>
              <th>{trans.__('State')}</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {state.models.map((m: IModelInfo) => {
              const busy = isPending(state, 'unload', m.alias);
              const cost = costBytes(m.realBytes, m.bytes);
              const measured = totalBytes(m.realBytes) > 0;
              const speed = formatTokensPerS(m.lastGeneration?.tokensPerS);
              return (
                <tr key={m.alias} className="jp-LLMOS-model" data-alias={m.alias}>
                  <td>
                    <div className="jp-LLMOS-name" title={m.source}>
                      {m.alias}
                      <span
                        className="jp-LLMOS-tag jp-LLMOS-engine"
                        title={trans.__('served by %1', m.engine)}
                      >
                        {m.engine}
                      </span>
                      {m.pinned && <span className="jp-LLMOS-tag">{trans.__('pinned')}</span>}
                    </div>
                    <div className="jp-LLMOS-sub">
                      {[m.task, m.dtype, m.device, formatEngineDetail(m.nCtx, m.threads)]
                        .filter(Boolean)
                        .join(' · ')}
                    </div>
                  </td>
                  <td>
                    <div
                      className="jp-LLMOS-bytes"
                      title={
                        measured
                          ? trans.__(
                              'measured cost per device (RSS/CUDA growth at load); tensors %1',
                              formatDeviceBytes(m.bytes)
                            )
                          : trans.__('tensor bytes per device')
                      }
                    >
                      {formatDeviceBytes(cost)}
                    </div>
                    {totalBytes(cost) === 0 && m.estimatedBytes !== null && (
                      <div className="jp-LLMOS-sub">
                        {trans.__('est. %1', formatBytes(m.estimatedBytes))}
                      </div>
                    )}
                  </td>
                  <td>
                    <span className={`jp-LLMOS-state jp-LLMOS-state-${m.state}`}>{m.state}</span>
                    {m.lastGeneration && speed !== '—' && (
                      <div
                        className="jp-LLMOS-sub jp-LLMOS-speed"
                        title={generationTitle(m.lastGeneration, trans)}
                      >
                        {speed}
                      </div>
                    )}
                  </td>
                  <td>
                    <button
                      className="jp-mod-styled jp-mod-warn jp-LLMOS-button"
                      aria-label={trans.__('Unload %1', m.alias)}
                      title={trans.__('Unload %1 and free its memory', m.alias)}
                      disabled={!live || busy}
                      onClick={() => model.act('unload', m.alias)}
                    >
                      {busy ? trans.__('Unloading…') : trans.__('Unload')}
                    </button>
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </Section>
  );
}

function Job(props: IProps & { job: IJobInfo }): JSX.Element {
  const { job, state, model, trans } = props;
  const busy = isPending(state, 'cancel', job.id);
  const steps = job.step !== null && job.totalSteps !== null ? `${job.step}/${job.totalSteps}` : '';
  return (
    <li className="jp-LLMOS-job" data-job={job.id} aria-label={trans.__('Job %1', job.id)}>
      <div className="jp-LLMOS-jobHead">
        <span className="jp-LLMOS-name">
          {job.kind || trans.__('job')} {job.target && `· ${job.target}`}
        </span>
        <span className={`jp-LLMOS-state jp-LLMOS-state-${job.state}`}>{job.state}</span>
        {isActiveJob(job) && (
          <button
            className="jp-mod-styled jp-mod-warn jp-LLMOS-button"
            aria-label={trans.__('Cancel job %1', job.id)}
            disabled={state.connection !== 'connected' || busy}
            onClick={() => model.act('cancel', job.id)}
          >
            {busy ? trans.__('Cancelling…') : trans.__('Cancel')}
          </button>
        )}
      </div>
      <Bar
        value={job.progress * 100}
        label={trans.__('Progress of job %1', job.id)}
        kind={job.state}
      />
      <div className="jp-LLMOS-sub jp-LLMOS-jobStats">
        <span>{formatPercent(job.progress * 100)}</span>
        {steps && <span>{trans.__('step %1', steps)}</span>}
        <span>{trans.__('loss %1', formatNumber(job.loss))}</span>
        <span>{trans.__('%1 samples/s', formatNumber(job.samplesPerS, 3))}</span>
        <span>{trans.__('ETA %1', formatDuration(job.etaS))}</span>
        {job.launcher && (
          <span aria-label={trans.__('Ranks of job %1', job.id)}>
            {job.ranksAlive === null
              ? trans.__('%1 ranks', job.worldSize)
              : trans.__('%1 ranks, %2 alive here', job.worldSize, job.ranksAlive)}
          </span>
        )}
      </div>
    </li>
  );
}

function Jobs(props: IProps): JSX.Element {
  const { state, trans } = props;
  return (
    <Section title={trans.__('Jobs')} count={state.jobs.length}>
      {state.jobs.length === 0 ? (
        <p className="jp-LLMOS-empty">{trans.__('No job.')}</p>
      ) : (
        <ul className="jp-LLMOS-list" aria-label={trans.__('Jobs')}>
          {state.jobs.map(job => (
            <Job key={job.id} {...props} job={job} />
          ))}
        </ul>
      )}
    </Section>
  );
}

/** The kernel's `%llm serve` server: its URL, load and a Stop button (shown only while it runs). */
function Server(props: IProps): JSX.Element | null {
  const { state, model, trans } = props;
  const server = state.server;
  if (server === null) {
    return null;
  }
  const busy = isPending(state, 'stop-server', '');
  return (
    <Section title={trans.__('Server')}>
      <div className="jp-LLMOS-server" aria-label={trans.__('OpenAI-compatible server')}>
        <div className="jp-LLMOS-jobHead">
          <span
            className="jp-LLMOS-name jp-LLMOS-url"
            title={trans.__('base_url for OpenAI clients')}
          >
            {server.baseUrl}
          </span>
          <button
            className="jp-mod-styled jp-mod-warn jp-LLMOS-button"
            aria-label={trans.__('Stop server')}
            title={trans.__('Stop the server and free its port')}
            disabled={state.connection !== 'connected' || busy}
            onClick={() => model.act('stop-server')}
          >
            {busy ? trans.__('Stopping…') : trans.__('Stop')}
          </button>
        </div>
        <div className="jp-LLMOS-sub">
          {server.models.length ? server.models.join(', ') : trans.__('no model loaded')}
        </div>
        <div className="jp-LLMOS-sub jp-LLMOS-serverStats">{formatServerLoad(server)}</div>
      </div>
    </Section>
  );
}

function Datasets(props: IProps): JSX.Element {
  const { state, trans } = props;
  return (
    <Section title={trans.__('Datasets')} count={state.datasets.length}>
      {state.datasets.length === 0 ? (
        <p className="jp-LLMOS-empty">{trans.__('No dataset.')}</p>
      ) : (
        <table className="jp-LLMOS-table" aria-label={trans.__('Datasets')}>
          <thead>
            <tr>
              <th>{trans.__('Name')}</th>
              <th>{trans.__('Rows')}</th>
              <th>{trans.__('Version')}</th>
            </tr>
          </thead>
          <tbody>
            {state.datasets.map((d: IDatasetInfo) => (
              <tr key={`${d.name}@${d.version}`} title={d.fingerprint}>
                <td className="jp-LLMOS-name">{d.name}</td>
                <td>{d.rows === null ? '—' : d.rows.toLocaleString()}</td>
                <td>{d.version}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </Section>
  );
}

function Gpu(props: {
  gpu: IGpuInfo;
  position: number;
  history: IHardwarePoint[];
  trans: TranslationBundle;
}): JSX.Element {
  const { gpu, position, history, trans } = props;
  const values = history.map(p => p.gpuUtil[position] ?? null);
  return (
    <div className="jp-LLMOS-gpu" aria-label={trans.__('GPU %1', gpu.index)}>
      <div className="jp-LLMOS-name">
        {`GPU ${gpu.index}`} <span className="jp-LLMOS-sub">{gpu.name}</span>
      </div>
      <div className="jp-LLMOS-metric">
        <span>{trans.__('Utilisation')}</span>
        <Bar value={gpu.util} label={trans.__('GPU %1 utilisation', gpu.index)} />
        <span>{formatPercent(gpu.util)}</span>
      </div>
      <div className="jp-LLMOS-metric">
        <span>{trans.__('Memory')}</span>
        <Bar
          value={share(gpu.memUsed, gpu.memTotal)}
          label={trans.__('GPU %1 memory', gpu.index)}
        />
        <span>{`${formatBytes(gpu.memUsed)} / ${formatBytes(gpu.memTotal)}`}</span>
      </div>
      <div className="jp-LLMOS-sub">
        {trans.__('%1 °C', gpu.temperature === null ? '—' : String(gpu.temperature))}
        {gpu.powerW !== null && ` · ${formatNumber(gpu.powerW, 3)} W`}
      </div>
      <Sparkline values={values} label={trans.__('GPU %1 utilisation history', gpu.index)} />
    </div>
  );
}

function Hardware(props: IProps): JSX.Element {
  const { state, trans } = props;
  const hw = state.hardware;
  return (
    <Section title={trans.__('Hardware')}>
      {hw === null ? (
        <p className="jp-LLMOS-empty">{trans.__('No sample yet.')}</p>
      ) : (
        <div className="jp-LLMOS-hardware">
          {hw.error && <p className="jp-LLMOS-sub">{hw.error}</p>}
          <div className="jp-LLMOS-metric">
            <span>{trans.__('CPU')}</span>
            <Bar value={hw.cpuPercent} label={trans.__('CPU utilisation')} />
            <span>{formatPercent(hw.cpuPercent)}</span>
          </div>
          <div className="jp-LLMOS-metric">
            <span>{trans.__('RAM')}</span>
            <Bar value={share(hw.ramUsed, hw.ramTotal)} label={trans.__('RAM used')} />
            <span>{`${formatBytes(hw.ramUsed)} / ${formatBytes(hw.ramTotal)}`}</span>
          </div>
          {hw.processRss !== null && (
            <div className="jp-LLMOS-metric">
              <span>{trans.__('Kernel')}</span>
              <Bar value={share(hw.processRss, hw.ramTotal)} label={trans.__('Kernel memory')} />
              <span title={trans.__('resident memory of this kernel process')}>
                {formatBytes(hw.processRss)}
              </span>
            </div>
          )}
          <Sparkline
            values={state.history.map(p => p.cpu)}
            label={trans.__('CPU utilisation history')}
          />
          {hw.gpus.length === 0 ? (
            <p className="jp-LLMOS-sub">{trans.__('No GPU visible to this kernel.')}</p>
          ) : (
            hw.gpus.map((g, i) => (
              <Gpu key={g.index} gpu={g} position={i} history={state.history} trans={trans} />
            ))
          )}
        </div>
      )}
    </Section>
  );
}

const STATUS_TEXT: Record<string, string> = {
  'no-notebook': 'No notebook',
  'no-kernel': 'No kernel',
  connecting: 'Connecting…',
  connected: 'Live',
  'not-loaded': 'llmos not loaded',
  loading: 'Loading llmos…',
  disconnected: 'Disconnected',
  paused: 'Paused'
};

function Header(props: IProps): JSX.Element {
  const { state, model, trans } = props;
  const paused = model.settings.paused;
  return (
    <div className="jp-LLMOS-header">
      <div className="jp-LLMOS-title">
        <span className={`jp-LLMOS-dot jp-LLMOS-dot-${state.connection}`} aria-hidden="true" />
        <span className="jp-LLMOS-status" role="status">
          {trans.__(STATUS_TEXT[state.connection] ?? state.connection)}
        </span>
        <span className="jp-LLMOS-kernel" title={state.kernelName}>
          {state.kernelName}
        </span>
      </div>
      <div className="jp-LLMOS-tools">
        <button
          className="jp-mod-styled jp-LLMOS-button"
          aria-label={trans.__('Refresh')}
          disabled={state.connection !== 'connected'}
          onClick={() => model.act('refresh')}
        >
          {trans.__('Refresh')}
        </button>
        <button
          className="jp-mod-styled jp-LLMOS-button"
          aria-label={paused ? trans.__('Resume updates') : trans.__('Pause updates')}
          aria-pressed={paused}
          onClick={() => model.requestPause(!paused)}
        >
          {paused ? trans.__('Resume') : trans.__('Pause')}
        </button>
      </div>
    </div>
  );
}

/** What the panel shows instead of data: no notebook, no kernel, llmos not loaded. */
function Blocker(props: IProps): JSX.Element | null {
  const { state, model, trans } = props;
  switch (state.connection) {
    case 'no-notebook':
      return (
        <div className="jp-LLMOS-blocker">
          <p>
            {trans.__("Open a notebook to see its kernel's models, jobs, datasets and hardware.")}
          </p>
        </div>
      );
    case 'no-kernel':
      return (
        <div className="jp-LLMOS-blocker">
          <p>{trans.__('This notebook has no running kernel.')}</p>
        </div>
      );
    case 'not-loaded':
    case 'loading':
      return (
        <div
          className="jp-LLMOS-blocker jp-LLMOS-missing"
          role="region"
          aria-label={trans.__('llmos not loaded')}
        >
          <p>
            {trans.__('This kernel has not loaded llmos_jupyter, so there is nothing to show.')}
          </p>
          <button
            className="jp-mod-styled jp-mod-accept jp-LLMOS-button"
            disabled={state.connection === 'loading'}
            onClick={() => void model.loadExtension()}
          >
            {state.connection === 'loading'
              ? trans.__('Loading…')
              : trans.__('Load llmos in this kernel')}
          </button>
          <p className="jp-LLMOS-sub">
            {trans.__(
              'Runs %1 in the kernel. The "LLM OS (Python 3)" kernel loads it at start.',
              '%load_ext llmos_jupyter'
            )}
          </p>
          {state.detail && (
            <p className="jp-LLMOS-error" role="alert">
              {state.detail}
            </p>
          )}
        </div>
      );
    default:
      return null;
  }
}

function Notices(props: IProps): JSX.Element | null {
  const { state, model, trans } = props;
  if (state.notices.length === 0) {
    return null;
  }
  return (
    <div className="jp-LLMOS-notices">
      {state.notices.map(n => (
        <div key={n.id} className="jp-LLMOS-error" role="alert">
          <span>{n.message}</span>
          <button
            className="jp-LLMOS-dismiss"
            aria-label={trans.__('Dismiss')}
            onClick={() => model.dispatch({ kind: 'dismiss', id: n.id })}
          >
            ×
          </button>
        </div>
      ))}
    </div>
  );
}

export function PanelView(props: IProps): JSX.Element {
  const { state } = props;
  const blocker = Blocker(props);
  const stale = state.connection !== 'connected';
  return (
    <div className="jp-LLMOS-view">
      <Header {...props} />
      <Notices {...props} />
      {blocker ?? (
        <div className={`jp-LLMOS-body ${stale ? 'jp-LLMOS-stale' : ''}`}>
          {state.connection === 'disconnected' && state.detail && (
            <p className="jp-LLMOS-sub">{state.detail}</p>
          )}
          <Models {...props} />
          <Server {...props} />
          <Jobs {...props} />
          <Datasets {...props} />
          <Hardware {...props} />
        </div>
      )}
    </div>
  );
}

/** The left-area widget. */
export class LLMOSPanel extends ReactWidget {
  constructor(model: LLMOSModel, trans: TranslationBundle) {
    super();
    this.model = model;
    this._trans = trans;
    this.id = PANEL_ID;
    this.addClass('jp-LLMOS-panel');
  }

  readonly model: LLMOSModel;

  render(): JSX.Element {
    return (
      <UseSignal signal={this.model.stateChanged} initialArgs={this.model.state}>
        {(_, state) => (
          <PanelView model={this.model} state={state ?? this.model.state} trans={this._trans} />
        )}
      </UseSignal>
    );
  }

  private _trans: TranslationBundle;
}
