/**
 * The LLM OS side panel in a real browser (galata + Debian's Chromium), against a real kernel:
 * load a tiny model with %llm, see it in the panel with its size, unload it from the panel, see
 * `%llm ps` empty; watch a background job's progress move; screenshot into <repo>/artifacts.
 */
import { expect, test } from '@jupyterlab/galata';
import * as path from 'path';

import { LLMOSPanelHelper } from './panel-helper';

const ARTIFACTS = path.resolve(__dirname, '..', '..', '..', 'artifacts');

test.use({ autoGoto: true });

test.describe('LLM OS panel', () => {
  test('shows a model and a job, unloads from the panel', async ({ page }) => {
    const panel = new LLMOSPanelHelper(page);

    // The palette offers the panel's command.
    await page.keyboard.press('Control+Shift+C');
    await page.locator('#modal-command-palette input').fill('LLM OS Panel');
    await expect(
      page.locator('#modal-command-palette').getByText('Show LLM OS Panel')
    ).toBeVisible();
    await page.keyboard.press('Escape');

    // A plain Python kernel has not loaded llmos: the panel offers to load it.
    await page.notebook.createNew("panel.ipynb", { kernel: 'python3' });
    await panel.open();
    const load = panel.root.getByRole('button', { name: 'Load llmos in this kernel' });
    await expect(load).toBeVisible({ timeout: 60000 });
    await load.click();
    await expect(panel.status).toHaveText('Live', { timeout: 60000 });
    await expect(panel.root.locator('.jp-LLMOS-kernel')).toHaveText('panel.ipynb · Python 3 (ipykernel)');
    await expect(panel.models).toContainText('No model loaded');
    await expect(panel.hardware).toContainText('CPU');

    // Load a tiny model with %llm: it appears with its size per device.
    // (%llm does no {var} expansion in paths, so the path is written out.)
    const tiny = `/tmp/llmos-ui-tiny-${Date.now()}`;
    const made = await panel.run(
      `import llmos_ui_helpers\nllmos_ui_helpers.save_tiny_llama('${tiny}')\nprint('saved')`
    );
    expect(made).toContain('saved');
    await panel.run(`%llm load ${tiny} --task causal-lm --as tiny`);
    const row = panel.modelRow('tiny');
    await expect(row).toBeVisible({ timeout: 30000 });
    await expect(row).toContainText('causal-lm');
    await expect(row.locator('.jp-LLMOS-bytes')).toHaveText(/cpu \d+(\.\d+)? (KiB|MiB)/);

    // A background job: its progress bar moves while the kernel sits idle.
    await panel.run("import llmos_ui_helpers\nllmos_ui_helpers.start_demo_job(60, 120)");
    const bar = panel.jobProgress('demo-1');
    await expect(bar).toBeVisible();
    const first = await panel.progressOf('demo-1');
    await expect.poll(() => panel.progressOf('demo-1'), { timeout: 15000 }).toBeGreaterThan(first + 5);
    await expect(panel.jobs).toContainText('samples/s');

    await page.sidebar.setWidth(430, 'left');
    await panel.root.screenshot({ path: path.join(ARTIFACTS, 'llmos-panel.png') });
    await page.screenshot({ path: path.join(ARTIFACTS, 'llmos-panel-lab.png') });

    // A foreground job blocks its cell; the panel still moves (pushes come from a thread).
    const nb = page.notebook;
    await nb.addCell('code', "llmos_ui_helpers.start_demo_job(10, 40, 'demo-fg', background=False)");
    const busyCell = (await nb.getCellCount()) - 1;
    await nb.runCell(busyCell, { wait: false });
    await expect(panel.jobProgress('demo-fg')).toBeVisible();
    await expect(page.locator('#jp-main-statusbar')).toContainText('Busy');
    const atStart = await panel.progressOf('demo-fg');
    await expect.poll(() => panel.progressOf('demo-fg'), { timeout: 8000 }).toBeGreaterThan(atStart + 10);
    await expect(page.locator('#jp-main-statusbar')).toContainText('Busy'); // still running
    await nb.waitForRun(busyCell);

    // Unload from the panel: the row goes, and %llm ps agrees.
    await panel.unloadButton('tiny').click();
    await expect(row).toHaveCount(0, { timeout: 30000 });
    await expect(panel.models).toContainText('No model loaded');
    const ps = await panel.run("%llm ps\nfrom llmos_jupyter import api\nprint('models:', len(api.state()['models']))");
    expect(ps).toContain('models: 0');
    expect(ps).not.toContain('tiny');
  });

  test('the LLM OS kernel connects without loading, in the dark theme', async ({ page }) => {
    const panel = new LLMOSPanelHelper(page);
    await page.theme.setDarkTheme();
    await page.notebook.createNew("llmos-kernel.ipynb", { kernel: 'llmos' });
    await panel.open();
    await expect(panel.status).toHaveText('Live', { timeout: 60000 });
    await expect(page.locator('.jp-NotebookPanel-toolbar')).toContainText('LLM OS (Python 3)');
    const out = await panel.run('%llm ps\nprint("ok")');
    expect(out).toContain('ok');
    // Pause closes the connection and keeps the data; Resume reconnects.
    await panel.root.getByRole('button', { name: 'Pause updates' }).click();
    await expect(panel.status).toHaveText('Paused');
    await panel.root.getByRole('button', { name: 'Resume updates' }).click();
    await expect(panel.status).toHaveText('Live');
    await panel.root.screenshot({ path: path.join(ARTIFACTS, 'llmos-panel-dark.png') });
  });
});
