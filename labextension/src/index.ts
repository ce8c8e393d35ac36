/**
 * llmos-jupyter's JupyterLab extension: the "LLM OS" side panel.
 *
 * The panel sits in the left area, follows the active notebook's kernel over the comm target
 * `llmos` (see `protocol.ts` and `llmos_jupyter/comm.py`), and is opened by the command
 * `llmos:open-panel` from the palette or the View menu. Settings: `schema/plugin.json`.
 */
import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import { LabIcon } from '@jupyterlab/ui-components';

import { DEFAULT_SETTINGS, IPanelSettings, LLMOSModel } from './model';
import { LLMOSPanel, PANEL_ID } from './panel';
import iconSvg from '../style/icon.svg';

export const PLUGIN_ID = 'llmos-jupyter:plugin';

export namespace CommandIDs {
  export const open = 'llmos:open-panel';
  export const refresh = 'llmos:refresh';
  export const togglePause = 'llmos:toggle-pause';
  export const loadExtension = 'llmos:load-extension';
}

export const llmosIcon = new LabIcon({ name: 'llmos-jupyter:chip', svgstr: iconSvg });

function readSettings(settings: ISettingRegistry.ISettings): IPanelSettings {
  const interval = Number(settings.get('refreshInterval').composite);
  return {
    refreshInterval: Number.isFinite(interval) ? interval : DEFAULT_SETTINGS.refreshInterval,
    paused: settings.get('paused').composite === true
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'LLM OS side panel: models, jobs, datasets and hardware of the active kernel.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ISettingRegistry, ILayoutRestorer, ILabShell, ITranslator],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null,
    labShell: ILabShell | null,
    translator: ITranslator | null
  ) => {
    const trans = (translator ?? nullTranslator).load('jupyterlab');
    const model = new LLMOSModel();
    const panel = new LLMOSPanel(model, trans);
    panel.title.icon = llmosIcon;
    panel.title.caption = trans.__('LLM OS');
    app.shell.add(panel, 'left', { rank: 900, type: 'LLM OS' });
    if (restorer) {
      restorer.add(panel, PANEL_ID);
    }

    // Follow the active notebook: its kernel is the one the panel shows.
    const follow = () => {
      const notebook = tracker.currentWidget;
      model.setSessionContext(notebook?.sessionContext ?? null, notebook?.context ?? null);
    };
    tracker.currentChanged.connect(follow);
    follow();

    const category = trans.__('LLM OS');
    const { commands } = app;
    commands.addCommand(CommandIDs.open, {
      label: trans.__('Show LLM OS Panel'),
      caption: trans.__("Models, jobs, datasets and hardware of the active notebook's kernel"),
      icon: args => (args['isPalette'] ? undefined : llmosIcon),
      execute: () => {
        if (labShell) {
          labShell.activateById(panel.id);
        } else {
          app.shell.activateById(panel.id);
        }
      }
    });
    commands.addCommand(CommandIDs.refresh, {
      label: trans.__('Refresh LLM OS Panel'),
      isEnabled: () => model.state.connection === 'connected',
      execute: () => model.act('refresh')
    });
    commands.addCommand(CommandIDs.togglePause, {
      label: trans.__('Pause LLM OS Panel Updates'),
      isToggled: () => model.settings.paused,
      execute: () => model.requestPause(!model.settings.paused)
    });
    commands.addCommand(CommandIDs.loadExtension, {
      label: trans.__('Load llmos in the Active Kernel'),
      isEnabled: () => !!model.sessionContext?.session?.kernel,
      execute: () => model.loadExtension()
    });
    model.stateChanged.connect(() => {
      commands.notifyCommandChanged(CommandIDs.refresh);
    });
    if (palette) {
      for (const command of Object.values(CommandIDs)) {
        palette.addItem({ command, category });
      }
    }

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () => {
            model.setSettings(readSettings(settings));
            commands.notifyCommandChanged(CommandIDs.togglePause);
          };
          model.persist = async change => {
            for (const [key, value] of Object.entries(change)) {
              await settings.set(key, value);
            }
          };
          settings.changed.connect(apply);
          apply();
        })
        .catch(reason => {
          console.warn('llmos-jupyter: settings not loaded, using defaults.', reason);
        });
    }
  }
};

export default plugin;
