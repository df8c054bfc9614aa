"""Small Java sources written for the tests (no network, no external corpus)."""

from __future__ import annotations

ACCOUNT = """package com.example.bank;

import java.util.ArrayList;
import java.util.List;

public class Account {
    private final String owner;
    private long balance;
    private final List<String> history = new ArrayList<>();

    public Account(String owner, long balance) {
        this.owner = owner;
        this.balance = balance;
    }

    public String getOwner() {
        return owner;
    }

    public long getBalance() {
        return balance;
    }

    public void deposit(long amount) {
        if (amount <= 0) {
            throw new IllegalArgumentException("amount must be positive");
        }
        balance += amount;
        history.add("deposit " + amount);
    }

    public void withdraw(long amount) {
        if (amount > balance) {
            throw new IllegalStateException("insufficient funds");
        }
        balance -= amount;
        history.add("withdraw " + amount);
    }

    public List<String> getHistory() {
        return history;
    }
}
"""

MAIN = """package com.example.bank;

public class Main {
    public static void main(String[] args) {
        Account account = new Account("alice", 100);
        account.deposit(50);
        account.withdraw(30);
        System.out.println(account.getOwner());
        System.out.println(account.getBalance());
        for (String entry : account.getHistory()) {
            System.out.println(entry);
        }
    }
}
"""

TODO = """package com.example.todo;

import java.util.ArrayList;
import java.util.List;

public class TodoList {
    private final List<String> items = new ArrayList<>();

    public void add(String item) {
        items.add(item);
    }

    public boolean remove(String item) {
        return items.remove(item);
    }

    public int size() {
        return items.size();
    }

    public String get(int index) {
        return items.get(index);
    }

    public static void main(String[] args) {
        TodoList list = new TodoList();
        list.add("write tests");
        list.add("ship it");
        System.out.println(list.size());
        System.out.println(list.get(0));
    }
}
"""

SAMPLES = {"Account.java": ACCOUNT, "Main.java": MAIN, "TodoList.java": TODO}


def training_texts(copies: int = 8) -> list[str]:
    """Repeated samples with light variation: enough text for a tiny tokenizer and models."""
    out = []
    for i in range(copies):
        for text in SAMPLES.values():
            out.append(text.replace("alice", f"user{i}").replace("100", str(100 + i)))
    return out
