/**
 * Playwright configuration for the LLM OS panel tests: galata's defaults, Debian's Chromium
 * (Playwright's own browser download is not available here), no video or trace, artefacts
 * under <repo>/artifacts. The JupyterLab server is started by run.sh.
 */
const path = require('path');
const baseConfig = require('@jupyterlab/galata/lib/playwright-config');

const artifacts = path.resolve(__dirname, '..', '..', 'artifacts');

module.exports = {
  ...baseConfig,
  testDir: './tests',
  outputDir: path.join(artifacts, 'ui-test-results'),
  reporter: [['list']],
  timeout: 240000,
  expect: { timeout: 30000 },
  retries: 0,
  workers: 1,
  use: {
    ...baseConfig.use,
    baseURL: process.env.TARGET_URL || 'http://127.0.0.1:8888',
    viewport: { width: 1366, height: 900 },
    video: 'off',
    trace: 'off',
    screenshot: 'only-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--no-first-run'
      ]
    }
  },
  projects: [{ name: 'chromium', use: { browserName: 'chromium' } }]
};
