// eslint for the side panel's TypeScript (`npm run lint`, run by `make lint` / `make test`).
// typescript-eslint's recommended rules; formatting is prettier's (eslint-config-prettier turns
// off the rules that would disagree with it).
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import prettier from 'eslint-config-prettier';

export default tseslint.config(
  { ignores: ['lib/**', 'node_modules/**', 'ui-tests/**', '../llmos_jupyter/labextension/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  prettier,
  {
    files: ['src/**/*.{ts,tsx}', 'test/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
      // JupyterLab's convention for command ids (`export namespace CommandIDs`), as in
      // jupyterlab/extension-examples
      '@typescript-eslint/no-namespace': 'off'
    }
  }
);
