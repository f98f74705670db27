// `{{name}}` stage plugin (JavaScript, built with componentize-js).
//
// `describe()` declares the `with` keys the host checks a pipeline against;
// `run(ctx)` gets the stage context and returns a report. WIT names become
// camelCase fields and kebab-case strings (`'info'`, `'passed'`); throw
// `{ tag: 'config', val: 'with.KEY: ...' }` for a wrong `with` table.
import { write } from 'ci:stage/log@0.1.0';

export function describe() {
  return {
    name: '{{name}}',
    version: '0.1.0',
    description: 'Says hello',
    config: [{ name: 'who', description: 'Whom to greet', required: false, defaultValue: '"world"' }],
    capabilities: [],
  };
}

export function run(ctx) {
  const config = JSON.parse(ctx.config || '{}') ?? {};
  for (const key of Object.keys(config)) {
    if (key !== 'who') throw { tag: 'config', val: `with.${key}: unknown key (expected: who)` };
  }
  const who = config.who ?? 'world';
  if (typeof who !== 'string') throw { tag: 'config', val: 'with.who: expected a string' };
  write('info', `greeting ${who} from stage ${ctx.stage}`);
  return {
    status: 'passed',
    summary: `hello, ${who}`,
    outputs: [['greeting', who]],
    annotations: [],
  };
}
