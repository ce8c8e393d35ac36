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

  /** The job's list item (kind, target, state, Cancel, progress bar, stats). */
  jobRow(id: string): Locator {
    return this.jobs.locator(`li[data-job="${id}"]`);
  }

  jobState(id: string): Locator {
    return this.jobRow(id).locator('.jp-LLMOS-state');
  }

  cancelButton(id: string): Locator {
    return this.root.getByRole('button', { name: `Cancel job ${id}`, exact: true });
  }

  /** Ids of the jobs listed, in the kernel's order (oldest first). */
  async jobIds(): Promise<string[]> {
    return this.jobs
      .locator('li.jp-LLMOS-job')
      .evaluateAll(items => items.map(li => li.getAttribute('data-job') ?? ''));
  }

  /**
   * Poll the job's progress bar until it has shown `count` different values; return them.
   * `keepGoing` is checked on every poll (e.g. "the cell is still busy") and must stay true.
   */
  async progressValues(
    id: string,
    count: number,
    timeout: number,
    keepGoing: () => Promise<boolean> = async () => true
  ): Promise<number[]> {
    const seen: number[] = [];
    const end = Date.now() + timeout;
    while (Date.now() < end) {
      const v = await this.progressOf(id);
      if (!(await keepGoing())) {
        break;
      }
      if (v > 0 && !seen.includes(v)) {
        seen.push(v);
        if (seen.length >= count) {
          break;
        }
      }
      await this.page.waitForTimeout(100);
    }
    return seen;
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
