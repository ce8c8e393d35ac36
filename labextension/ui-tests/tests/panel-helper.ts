/**
 * Page object for the LLM OS side panel: locators by accessible role and name.
 */
import { IJupyterLabPageFixture } from '@jupyterlab/galata';
import { Locator } from '@playwright/test';

export class LLMOSPanelHelper {
  constructor(readonly page: IJupyterLabPageFixture) {}

  /** The panel's widget in the left area. */
  get root(): Locator {
    return this.page.locator('#llmos-panel');
  }

  get status(): Locator {
    return this.root.getByRole('status');
  }

  get models(): Locator {
    return this.root.getByRole('region', { name: 'Models' });
  }

  get jobs(): Locator {
    return this.root.getByRole('region', { name: 'Jobs' });
  }

  get hardware(): Locator {
    return this.root.getByRole('region', { name: 'Hardware' });
  }

  modelRow(alias: string): Locator {
    return this.models.locator(`tr[data-alias="${alias}"]`);
  }

  unloadButton(alias: string): Locator {
    return this.root.getByRole('button', { name: `Unload ${alias}`, exact: true });
  }

  jobProgress(id: string): Locator {
    return this.root.getByRole('progressbar', { name: `Progress of job ${id}` });
  }

  async progressOf(id: string): Promise<number> {
    return Number(await this.jobProgress(id).getAttribute('aria-valuenow'));
  }

  /** Open the panel with its command, as the palette or the View menu would. */
  async open(): Promise<void> {
    await this.page.evaluate(async () => {
      await (window as any).jupyterapp.commands.execute('llmos:open-panel');
    });
    await this.root.waitFor({ state: 'visible' });
  }

  /** Run `source` in a new last cell of the active notebook and return its text output. */
  async run(source: string): Promise<string> {
    const nb = this.page.notebook;
    const index = (await nb.getCellCount()) - 1;
    const last = (await nb.getCellTextInput(index)) ?? '';
    if (last.trim() === '') {
      await nb.setCell(index, 'code', source);
    } else {
      await nb.addCell('code', source);
    }
    const cell = (await nb.getCellCount()) - 1;
    await nb.runCell(cell);
    return ((await nb.getCellTextOutput(cell)) ?? []).join('');
  }
}
