/**
 * The LLM OS side panel in a real browser (galata + Debian's Chromium), against a real kernel:
 * load a tiny random BERT with %llm and see it with its size; fine-tune it on a data set made in
 * the notebook through the real job path (background: progress, loss, samples/s, done; a second
 * one cancelled from the panel; foreground: the bar moves while the cell runs, and while a long one
 * blocks its cell the panel's Unload is answered at once and its Cancel stops the run within 2 s);
 * unload the model from the panel and see `%llm ps` empty; start `%llm serve` and stop it with the
 * panel's Stop button; screenshots into <repo>/artifacts.
 */
import { expect, test } from '@jupyterlab/galata';
import * as path from 'path';

import { LLMOSPanelHelper } from './panel-helper';

const ARTIFACTS = path.resolve(__dirname, '..', '..', '..', 'artifacts');

test.use({ autoGoto: true });

/** 150 training rows at batch size 4: 38 steps per epoch. */
const OPTS = '--batch-size 4 --max-length 16 --seed 0';

/** 200 labelled reviews, balanced (a positive or a negative word among filler words). */
const DATASET = [
  'import random',
  'rng = random.Random(0)',
  "pos, neg = 'good great fine lovely fun'.split(), 'bad awful dull boring weak'.split()",
  "fill = 'the movie film plot was and a very story acting'.split()",
  "rows = [{'text': ' '.join(rng.sample(fill, 4) + [rng.choice(pos if i % 2 else neg)]), 'label': i % 2} for i in range(200)]",
  "print(len(rows), 'rows', rows[0])"
].join('\n');

/** The job id that `%llm finetune ... --background` printed. */
function jobIdIn(output: string): string {
  const m = /job-\d+/.exec(output);
  expect(m, `no job id in: ${output}`).not.toBeNull();
  return m![0];
}

test.describe('LLM OS panel', () => {
  test('fine-tunes through real jobs, cancels one, unloads from the panel', async ({ page }) => {
    const panel = new LLMOSPanelHelper(page);

    // The palette offers the panel's command.
    await page.keyboard.press('Control+Shift+C');
    await page.locator('#modal-command-palette input').fill('LLM OS Panel');
    await expect(
      page.locator('#modal-command-palette').getByText('Show LLM OS Panel')
    ).toBeVisible();
    await page.keyboard.press('Escape');

    // A plain Python kernel has not loaded llmos: the panel offers to load it.
    await page.notebook.createNew('panel.ipynb', { kernel: 'python3' });
    await panel.open();
    const load = panel.root.getByRole('button', { name: 'Load llmos in this kernel' });
    await expect(load).toBeVisible({ timeout: 60000 });
    await load.click();
    await expect(panel.status).toHaveText('Live', { timeout: 60000 });
    await expect(panel.root.locator('.jp-LLMOS-kernel')).toHaveText(
      'panel.ipynb · Python 3 (ipykernel)'
    );
    await expect(panel.models).toContainText('No model loaded');
    await expect(panel.hardware).toContainText('CPU');

    // Load a tiny random BERT classifier with %llm: it appears with its engine and its size
    // per device (what loading it really cost, measured, else its tensor bytes).
    // (%llm does no {var} expansion in paths, so the path is written out.)
    const tiny = `/tmp/llmos-ui-tiny-${Date.now()}`;
    const made = await panel.run(
      `import tiny_kit\nsaved = tiny_kit.save_tiny('${tiny}', 'bert-cls')\nprint('config saved:', (saved / 'config.json').exists())`
    );
    expect(made).toContain('config saved: True');
    await panel.run(`%llm load ${tiny} --task seq-cls --labels negative,positive --as tiny`);
    const row = panel.modelRow('tiny');
    await expect(row).toBeVisible({ timeout: 30000 });
    await expect(row).toContainText('seq-cls');
    await expect(row.locator('.jp-LLMOS-engine')).toHaveText('transformers');
    await expect(row.locator('.jp-LLMOS-bytes')).toHaveText(/cpu \d+(\.\d+)? (KiB|MiB|GiB)/);

    // A small labelled data set made in the notebook, loaded and split with %llm.
    const rows = await panel.run(DATASET);
    expect(rows).toContain('200 rows');
    const split = await panel.run('%llm data load rows --as ds\n%llm data split ds --test 0.25');
    expect(split).toMatch(/train/);

    // A real background fine-tune: the cell returns at once with the job's id, and the job's row
    // moves while the kernel sits idle, with a loss and a rate, until it is done.
    const bgOut = await panel.run(`%llm finetune tiny ds --background --epochs 15 ${OPTS}`);
    const bg = jobIdIn(bgOut);
    await expect(panel.jobProgress(bg)).toBeVisible({ timeout: 30000 });
    const statusbar = page.locator('#jp-main-statusbar');
    const idle = async () => ((await statusbar.textContent()) ?? '').includes('Idle');
    const moved = await panel.progressValues(bg, 2, 60000, idle);
    expect(moved.length, `progress seen while the kernel was idle: ${moved}`).toBe(2);
    await expect(panel.jobRow(bg)).toContainText(/loss \d+(\.\d+)?/);
    await expect(panel.jobRow(bg)).toContainText(/\d+(\.\d+)? samples\/s/);
    await expect(panel.jobRow(bg)).toContainText(/step \d+\/570/);
    await expect(panel.jobState(bg)).toHaveText('done', { timeout: 90000 });
    expect(await panel.progressOf(bg)).toBe(100);
    await expect(panel.jobRow(bg)).toContainText('step 570/570');
    await expect(panel.cancelButton(bg)).toHaveCount(0);

    // A second, long background fine-tune: screenshot the panel with the model and this job
    // running, then cancel it from the panel; it stops and ends "cancelled".
    const longOut = await panel.run(`%llm finetune tiny ds --background --epochs 200 ${OPTS}`);
    const long = jobIdIn(longOut);
    expect(long).not.toBe(bg);
    expect((await panel.progressValues(long, 1, 60000)).length).toBe(1);
    await expect(panel.jobRow(long)).toContainText(/\d+(\.\d+)? samples\/s/);
    await expect.poll(() => panel.progressOf(long), { timeout: 60000 }).toBeGreaterThanOrEqual(3);
    await page.sidebar.setWidth(430, 'left');
    await expect(panel.jobState(long)).toHaveText('running');
    await panel.root.screenshot({ path: path.join(ARTIFACTS, 'llmos-panel.png') });
    await page.screenshot({ path: path.join(ARTIFACTS, 'llmos-panel-lab.png') });
    await expect(panel.jobState(long)).toHaveText('running'); // the screenshot shows it running
    await panel.cancelButton(long).click();
    await expect(panel.jobState(long)).toHaveText('cancelled', { timeout: 30000 });
    await expect(panel.cancelButton(long)).toHaveCount(0);
    expect(await panel.progressOf(long)).toBeLessThan(100);
    const jobs = await panel.run(`%llm jobs`);
    expect(jobs).toMatch(new RegExp(`${long}\\s*finetune\\s*tiny\\s*cancelled`));
    expect(jobs).toMatch(new RegExp(`${bg}\\s*finetune\\s*tiny\\s*done`));

    // A foreground fine-tune blocks its cell; the panel still moves (pushes come from a thread).
    const nb = page.notebook;
    await nb.addCell('code', `%llm finetune tiny ds --epochs 10 ${OPTS}`);
    const busyCell = (await nb.getCellCount()) - 1;
    await nb.runCell(busyCell, { wait: false });
    await expect(panel.jobs.locator('li.jp-LLMOS-job')).toHaveCount(3, { timeout: 30000 });
    const fg = (await panel.jobIds())[2];
    expect([bg, long]).not.toContain(fg);
    const busy = async () => ((await statusbar.textContent()) ?? '').includes('Busy');
    expect(await busy()).toBe(true);
    const fgMoved = await panel.progressValues(fg, 2, 60000, busy);
    expect(fgMoved.length, `progress seen while the cell was busy: ${fgMoved}`).toBe(2);
    await nb.waitForRun(busyCell);
    await expect(panel.jobState(fg)).toHaveText('done', { timeout: 30000 });

    // The panel acts while a foreground fine-tune blocks its cell (the kernel reads the panel's
    // comm on a subshell; without one, Cancel sends the kernel interrupt): Unload of the model in
    // training is answered at once (refused: it is busy), and Cancel stops the run at its next step
    // (~0.5 s here; the bounds are loose for a loaded CI machine: a missed Cancel runs for minutes).
    await nb.addCell('code', `%llm finetune tiny ds --epochs 500 ${OPTS}`);
    const longCell = (await nb.getCellCount()) - 1;
    await nb.runCell(longCell, { wait: false });
    await expect(panel.jobs.locator('li.jp-LLMOS-job')).toHaveCount(4, { timeout: 30000 });
    const fg2 = (await panel.jobIds())[3];
    expect((await panel.progressValues(fg2, 1, 60000, busy)).length).toBe(1);
    await panel.unloadButton('tiny').click();
    await expect(panel.root.getByRole('alert').filter({ hasText: 'is used by' })).toBeVisible({
      timeout: 10000
    });
    await expect(row).toHaveCount(1);
    // the cell still runs (the status bar may say Idle: it shows the subshell's last status)
    const prompt = page.locator('.jp-Notebook .jp-Cell').nth(longCell).locator('.jp-InputPrompt');
    await expect(prompt).toHaveText('[*]:');
    await expect(panel.jobState(fg2)).toHaveText('running');
    const clicked = Date.now();
    await panel.cancelButton(fg2).click();
    await expect(panel.jobState(fg2)).toHaveText(/cancelled|interrupted/, { timeout: 10000 });
    const stoppedMs = Date.now() - clicked;
    console.log(`[ui-tests] foreground fine-tune stopped ${stoppedMs} ms after Cancel`);
    await nb.waitForRun(longCell);
    expect(await panel.progressOf(fg2)).toBeLessThan(100);
    const stopped = await panel.run('%llm jobs');
    expect(stopped).toMatch(new RegExp(`${fg2}\\s*finetune\\s*tiny\\s*(cancelled|interrupted)`));

    // Unload from the panel: the row goes, and %llm ps agrees.
    await panel.unloadButton('tiny').click();
    await expect(row).toHaveCount(0, { timeout: 30000 });
    await expect(panel.models).toContainText('No model loaded');
    const ps = await panel.run(
      "%llm ps\nfrom llmos_jupyter import api\nprint('models:', len(api.state()['models']))"
    );
    expect(ps).toContain('models: 0');
    expect(ps).not.toContain('tiny');
  });

  test('the LLM OS kernel connects without loading, in the dark theme', async ({ page }) => {
    const panel = new LLMOSPanelHelper(page);
    await page.theme.setDarkTheme();
    await page.notebook.createNew('llmos-kernel.ipynb', { kernel: 'llmos' });
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
    // `%llm serve` shows the server with its URL and load; the panel's Stop button stops it.
    const served = await panel.run('%llm serve');
    expect(served).toContain('http://127.0.0.1:');
    const server = panel.root.getByRole('region', { name: 'Server' });
    await expect(server).toContainText(/http:\/\/127\.0\.0\.1:\d+\/v1/, { timeout: 30000 });
    await expect(server).toContainText('0 served · 0 in flight · 0 queued');
    await panel.root.screenshot({ path: path.join(ARTIFACTS, 'llmos-panel-dark.png') });
    await panel.root.getByRole('button', { name: 'Stop server' }).click();
    await expect(server).toHaveCount(0, { timeout: 30000 });
    expect(await panel.run('%llm serve status')).toContain('no server is running');
  });
});
