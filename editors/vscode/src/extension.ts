/**
 * Kaffee for VS Code: starts `kaffee serve` (LSP over stdio) for Java files.
 *
 * Everything the server offers is wired by vscode-languageclient (>= 10 speaks
 * LSP 3.18): the completion list (`textDocument/completion`) and inline ghost
 * text (`textDocument/inlineCompletion`, registered because the server
 * advertises `inlineCompletionProvider`). This file only builds the command
 * line and the initialization options from the settings, and restarts or
 * re-configures the server when those settings change.
 *
 * The status-bar item shows the server's `kaffee/status` notifications (loading,
 * ready, n-gram fallback, error, disabled); clicking it runs `kaffee.toggle`, which
 * flips the `kaffee.enable` setting (sent to the server as `enable`). Accepting a
 * suggestion runs its `kaffee.accepted` command, which vscode-languageclient
 * forwards to the server (`workspace/executeCommand`) because the server lists it in
 * `executeCommandProvider`: the server's local acceptance statistics.
 */
import * as os from 'os';
import * as path from 'path';
import * as vscode from 'vscode';
import {
    DidChangeConfigurationNotification,
    LanguageClient,
    LanguageClientOptions,
    ServerOptions,
    State,
    TransportKind,
} from 'vscode-languageclient/node';

const SECTION = 'kaffee';

/**
 * The server's initializationOptions and didChangeConfiguration settings. Every field is
 * sent: null asks for the server's default, so clearing a setting takes effect.
 */
interface KaffeeOptions {
    modelPath?: string | null;
    maxLines?: number | null;
    deadlineMs?: number | null;
    workspaceContext?: boolean | null;
    device?: 'cpu' | 'cuda' | 'auto' | null;
    enable?: boolean | null;
    stats?: boolean | null;
    debounceMs?: number | null;
    backend?: string | null; // null: the server's --backend flags
    remoteModel?: string | null;
    apiKeyEnv?: string | null;
}

/** The params of the server's `kaffee/status` notification. */
interface KaffeeStatus {
    state: 'loading' | 'ready' | 'fallback' | 'error' | 'disabled';
    model: string | null;
    backend: string | null;
    device: string | null;
    latencyMs: number | null;
    message: string | null;
}

const STATUS_NOTIFICATION = 'kaffee/status';

/** Settings that change the server's command line: a change restarts the server. */
const RESTART_SETTINGS = ['server.path', 'server.args', 'server.logLevel'];

let client: LanguageClient | undefined;
let statusItem: vscode.StatusBarItem | undefined;
let lastStatus: KaffeeStatus | undefined;

/** The value the user set (in any scope), or undefined when only the default applies. */
function userValue<T>(config: vscode.WorkspaceConfiguration, key: string): T | undefined {
    const inspected = config.inspect<T>(key);
    if (inspected === undefined) {
        return undefined;
    }
    const value =
        inspected.workspaceFolderValue ?? inspected.workspaceValue ?? inspected.globalValue;
    return value === null ? undefined : value;
}

/**
 * Like userValue, for the settings that say where code and an API key go
 * (`restrictedConfigurations` in package.json): in an untrusted workspace only the
 * user's own value counts, as `config.get` does for them (`inspect` would not).
 */
function trustedUserValue<T>(config: vscode.WorkspaceConfiguration, key: string): T | undefined {
    if (vscode.workspace.isTrusted) {
        return userValue<T>(config, key);
    }
    const value = config.inspect<T>(key)?.globalValue;
    return value === null ? undefined : value;
}

/** A non-empty trimmed string, else undefined. */
function nonEmpty(value: string | undefined): string | undefined {
    const trimmed = value?.trim();
    return trimmed ? trimmed : undefined;
}

/** `~` is the home directory; a relative path is taken from the first workspace folder. */
function resolvePath(value: string): string {
    let resolved = value.trim();
    if (resolved === '~' || resolved.startsWith('~/') || resolved.startsWith('~\\')) {
        resolved = path.join(os.homedir(), resolved.slice(1));
    }
    const folder = vscode.workspace.workspaceFolders?.[0];
    if (!path.isAbsolute(resolved) && folder !== undefined && folder.uri.scheme === 'file') {
        resolved = path.join(folder.uri.fsPath, resolved);
    }
    return resolved;
}

/** The initializationOptions (and didChangeConfiguration settings) built from the user's settings. */
function serverOptionsFromSettings(): KaffeeOptions {
    const config = vscode.workspace.getConfiguration(SECTION);
    const options: KaffeeOptions = {};
    const modelPath = nonEmpty(userValue<string>(config, 'modelPath'));
    options.modelPath = modelPath !== undefined ? resolvePath(modelPath) : null;
    options.maxLines = userValue<number>(config, 'maxLines') ?? null;
    options.deadlineMs = userValue<number>(config, 'deadlineMs') ?? null;
    options.workspaceContext = userValue<boolean>(config, 'workspaceContext') ?? null;
    options.device = userValue<'cpu' | 'cuda' | 'auto'>(config, 'device') ?? null;
    options.enable = enabled();
    options.stats = userValue<boolean>(config, 'stats') ?? null;
    options.debounceMs = userValue<number>(config, 'debounceMs') ?? null;
    options.backend = nonEmpty(trustedUserValue<string>(config, 'backend')) ?? null;
    options.remoteModel = nonEmpty(userValue<string>(config, 'remoteModel')) ?? null;
    options.apiKeyEnv = nonEmpty(trustedUserValue<string>(config, 'apiKeyEnv')) ?? null;
    return options;
}

/** Suggestions on (`kaffee.enable`, flipped by the status-bar item). */
function enabled(): boolean {
    return vscode.workspace.getConfiguration(SECTION).get<boolean>('enable', true);
}

/** Flips `kaffee.enable` where its current value comes from (workspace folder, workspace or user). */
async function toggle(): Promise<void> {
    const config = vscode.workspace.getConfiguration(SECTION);
    const inspected = config.inspect<boolean>('enable');
    const target =
        inspected?.workspaceFolderValue !== undefined
            ? vscode.ConfigurationTarget.WorkspaceFolder
            : inspected?.workspaceValue !== undefined
              ? vscode.ConfigurationTarget.Workspace
              : vscode.ConfigurationTarget.Global;
    await config.update('enable', !enabled(), target);
    showStatus(); // at once; the server's `disabled` / `ready` follows
}

const STATE_ICON: Record<KaffeeStatus['state'], string> = {
    loading: '$(sync~spin)',
    ready: '$(check)',
    fallback: '$(warning)',
    error: '$(error)',
    disabled: '$(circle-slash)',
};

/** The status-bar item from the last `kaffee/status` (or the local toggle while none came yet). */
function showStatus(status: KaffeeStatus | undefined = lastStatus): void {
    if (statusItem === undefined) {
        return;
    }
    const state = !enabled() ? 'disabled' : status?.state ?? 'loading';
    const label = { loading: 'loading', ready: '', fallback: 'n-gram', error: 'error', disabled: 'off' }[state];
    statusItem.text = `${STATE_ICON[state]} Kaffee${label ? ' ' + label : ''}`;
    const lines = [`Kaffee: ${state}`];
    if (status?.message) {
        lines.push(status.message);
    }
    if (status?.model) {
        lines.push(`model: ${status.model}`);
    }
    if (status?.backend || status?.device) {
        lines.push(`backend: ${status.backend ?? '?'} on ${status.device ?? '?'}`);
    }
    if (status?.latencyMs !== null && status?.latencyMs !== undefined) {
        lines.push(`last answer: ${Math.round(status.latencyMs)} ms`);
    }
    lines.push(enabled() ? 'Click to turn suggestions off' : 'Click to turn suggestions on');
    statusItem.tooltip = lines.join('\n');
    statusItem.backgroundColor =
        state === 'error'
            ? new vscode.ThemeColor('statusBarItem.errorBackground')
            : state === 'fallback'
              ? new vscode.ThemeColor('statusBarItem.warningBackground')
              : undefined;
}

function executable(): { command: string; args: string[] } {
    const config = vscode.workspace.getConfiguration(SECTION);
    const configured = config.get<string>('server.path', 'kaffee').trim() || 'kaffee';
    // A bare name is looked up on PATH; anything with a separator is a path.
    const command = configured.includes('/') || configured.includes('\\') ? resolvePath(configured) : configured;
    const args = [...config.get<string[]>('server.args', ['serve'])];
    const logLevel = config.get<string>('server.logLevel');
    if (logLevel && !args.includes('--log-level')) {
        args.push('--log-level', logLevel);
    }
    return { command, args };
}

function inlineEnabled(): boolean {
    return vscode.workspace.getConfiguration(SECTION).get<boolean>('inlineCompletion.enable', true);
}

function createClient(channel: vscode.LogOutputChannel): LanguageClient {
    const { command, args } = executable();
    channel.info(`starting: ${command} ${args.join(' ')}`);
    const run = { command, args, transport: TransportKind.stdio };
    const serverOptions: ServerOptions = { run, debug: run };
    const clientOptions: LanguageClientOptions = {
        documentSelector: [
            { scheme: 'file', language: 'java' },
            { scheme: 'untitled', language: 'java' },
        ],
        // A function, so that a restart picks up the current settings.
        initializationOptions: () => serverOptionsFromSettings(),
        outputChannel: channel,
        middleware: {
            provideInlineCompletionItems: (document, position, context, token, next) =>
                enabled() && inlineEnabled() ? next(document, position, context, token) : undefined,
        },
    };
    const created = new LanguageClient('kaffee', 'Kaffee', serverOptions, clientOptions);
    created.onNotification(STATUS_NOTIFICATION, (status: KaffeeStatus) => {
        lastStatus = status;
        showStatus();
    });
    created.onDidChangeState((event) => {
        if (event.newState === State.Stopped && client === created) {
            lastStatus = {
                state: 'error',
                model: lastStatus?.model ?? null,
                backend: null,
                device: null,
                latencyMs: null,
                message: 'the language server is not running (Kaffee: Restart Language Server)',
            };
            showStatus();
        }
    });
    return created;
}

/** The current settings to a running server (`workspace/didChangeConfiguration`). */
async function sendSettings(): Promise<void> {
    if (client !== undefined && client.state === State.Running) {
        // Same shape as initializationOptions, under the section name.
        await client.sendNotification(DidChangeConfigurationNotification.type, {
            settings: { [SECTION]: serverOptionsFromSettings() },
        });
    }
}

async function start(channel: vscode.LogOutputChannel): Promise<void> {
    lastStatus = undefined;
    showStatus();
    client = createClient(channel);
    try {
        await client.start();
    } catch (error) {
        const message = error instanceof Error ? error.message : String(error);
        channel.error(`the server did not start: ${message}`);
        const choice = await vscode.window.showErrorMessage(
            `Kaffee: could not start the language server (${message}). ` +
                'Is `kaffee` installed, or is `kaffee.server.path` set?',
            'Open Settings',
            'Show Log',
        );
        if (choice === 'Open Settings') {
            await vscode.commands.executeCommand('workbench.action.openSettings', 'kaffee.server');
        } else if (choice === 'Show Log') {
            channel.show();
        }
    }
}

async function stop(): Promise<void> {
    const running = client;
    client = undefined;
    if (running !== undefined && running.state !== State.Stopped) {
        try {
            await running.stop();
        } catch (error) {
            // A server that does not answer `shutdown` in time is killed by the client.
            running.outputChannel.warn(`stopping the server: ${String(error)}`);
        }
    }
}

async function restart(channel: vscode.LogOutputChannel): Promise<void> {
    await stop();
    await start(channel);
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
    const channel = vscode.window.createOutputChannel('Kaffee', { log: true });
    statusItem = vscode.window.createStatusBarItem('kaffee.status', vscode.StatusBarAlignment.Right, 100);
    statusItem.name = 'Kaffee';
    statusItem.command = 'kaffee.toggle';
    showStatus();
    statusItem.show();
    context.subscriptions.push(
        channel,
        statusItem,
        vscode.commands.registerCommand('kaffee.restartServer', () => restart(channel)),
        vscode.commands.registerCommand('kaffee.showOutput', () => channel.show()),
        vscode.commands.registerCommand('kaffee.toggle', toggle),
        vscode.workspace.onDidChangeConfiguration(async (event) => {
            if (!event.affectsConfiguration(SECTION)) {
                return;
            }
            if (event.affectsConfiguration(`${SECTION}.enable`)) {
                showStatus();
            }
            if (RESTART_SETTINGS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`))) {
                await restart(channel);
            } else {
                await sendSettings();
            }
        }),
        // Workspace values of the restricted settings count from now on.
        vscode.workspace.onDidGrantWorkspaceTrust(() => sendSettings()),
        { dispose: () => void stop() },
    );
    await start(channel);
}

export async function deactivate(): Promise<void> {
    await stop();
}
